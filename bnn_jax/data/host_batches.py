"""Global jax.Arrays assembled from each process's host-local batches, a few batches ahead."""

import collections
from collections.abc import Iterator

import jax


def process_rows(sharding: jax.sharding.Sharding, global_batch: int) -> tuple[int, int]:
  """[start, stop): the rows of a global batch that this process's devices hold."""
  index_map = sharding.addressable_devices_indices_map((global_batch,))
  spans = sorted(
    {
      (s[0].start or 0, global_batch if s[0].stop is None else s[0].stop)
      for s in index_map.values()
    }
  )
  start, stop = spans[0][0], spans[-1][1]
  if sum(b - a for a, b in spans) != stop - start:
    raise ValueError(f"this process's rows {spans} of the batch are not contiguous")
  return start, stop


def global_batches(
  dataset, sharding: jax.sharding.Sharding, global_batch: int, prefetch: int = 2
) -> Iterator[dict[str, jax.Array]]:
  """Local numpy batches -> global jax.Arrays sharded by `sharding`, `prefetch` batches ahead."""
  queue = collections.deque()
  for local in dataset.as_numpy_iterator():
    queue.append(
      {
        k: jax.make_array_from_process_local_data(sharding, v, (global_batch, *v.shape[1:]))
        for k, v in local.items()
      }
    )
    if len(queue) > prefetch:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
