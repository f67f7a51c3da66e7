"""Cost of sealing and verifying a checkpoint (bnn_jax/checksums.py) of VGG-Small on CIFAR-10.

  python benchmarks/checkpoint_checksums.py [--repeats=5]

Saves a train state of configs/vgg_small.py (latent weights, scales, BatchNorm, Adam's two
moments, filled with noise as trained values are: about 55 MB) with `checkpointing.Checkpoints`,
then times, on the files in the page cache: the seal (sha256 of every file and the manifest
write), the verification before a restore, and the raw speed of sha256, blake2b and crc32 over
the same bytes in memory. Prints the machine and the load average with the figures (the median
of --repeats).
"""

import hashlib
import os
import statistics
import sys
import tempfile
import time
import zlib

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import machine  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 5, "Timings of each kind; the median is reported.")


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def randomized(state):
  """Every float array of `state` filled with normal noise (the shapes and shardings kept)."""
  import jax
  import jax.numpy as jnp

  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(0), len(leaves))
  return treedef.unflatten(
    [
      jax.random.normal(k, x.shape, x.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
      for k, x in zip(keys, leaves)
    ]
  )


def main(argv):
  del argv
  import jax

  from bnn_jax import checkpointing, checksums, optim, run
  from bnn_jax.data import DataSpec
  from configs import vgg_small

  config = vgg_small.get_config()
  spec = DataSpec(10, (32, 32, 3), (0.5,) * 3, (0.25,) * 3)
  tx, _ = optim.make(config, steps_per_epoch=1)
  _, state = run.init_state(config, spec, tx, run.make_mesh())
  state = randomized(state)  # trained values: Adam's zero moments would compress to nothing
  with tempfile.TemporaryDirectory() as workdir:
    checkpoints = checkpointing.Checkpoints(workdir, keep=2)
    checkpoints.save(1, state)
    checkpoints.wait_until_finished()
    folder = checkpoints.directory / "1"
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != checksums.MANIFEST]
    data = [p.read_bytes() for p in files]
    size = sum(len(d) for d in data)
    seal = median_seconds(lambda: checksums.seal(folder), FLAGS.repeats)
    verify = median_seconds(lambda: checksums.damage(folder), FLAGS.repeats)
    hashes = {
      "sha256": lambda: [hashlib.sha256(d).digest() for d in data],
      "blake2b": lambda: [hashlib.blake2b(d).digest() for d in data],
      "crc32": lambda: [zlib.crc32(d) for d in data],
    }
    raw = {name: median_seconds(fn, FLAGS.repeats) for name, fn in hashes.items()}
    assert checksums.damage(folder) is None
    checkpoints.close()
    jax.clear_caches()

  print(f"machine: {machine.describe()}")
  print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print(f"checkpoint: VGG-Small train state, {len(files)} files, {size / 1e6:.1f} MB")
  print(f"seal (sha256 manifest):   {seal * 1e3:8.1f} ms  ({size / seal / 1e6:7.0f} MB/s)")
  print(f"verify before a restore:  {verify * 1e3:8.1f} ms  ({size / verify / 1e6:7.0f} MB/s)")
  for name, seconds in raw.items():
    print(
      f"{name:<8} in memory:        {seconds * 1e3:8.1f} ms  ({size / seconds / 1e6:7.0f} MB/s, "
      f"{seconds / raw['sha256']:.2f} x sha256)"
    )


if __name__ == "__main__":
  from bnn_jax import cli  # absl's app.run, but --help exits 0 and bad flags with one sentence

  cli.run(main)
