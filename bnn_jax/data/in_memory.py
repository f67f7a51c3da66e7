"""Small image datasets held in memory and on the device; knows nothing of models.

The datasets come from `bnn_jax.data.sources`. The whole dataset (uint8) is placed on the devices
once. Per-epoch shuffling, batch selection and augmentation (`augment`: pad-4 random crop and/or
horizontal flip) then run on the device inside the jitted train step, from the step counter
alone: nothing to prefetch, nothing to starve, and a resumed run sees exactly the batches it
would have seen.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bnn_jax.data import DATASETS, DataSpec, summarize
from bnn_jax.data.sources import load

AUGMENTATIONS = ("crop_flip", "crop", "flip", "none")


# ----------------------------------------------------------------------------- on device


def augment(images: jax.Array, key: jax.Array, kind: str, padding: int = 4) -> jax.Array:
  """Per-example augmentation of uint8 images [B, H, W, C]; same shape and dtype.

  kind: "crop" (a random HxW window of the image zero-padded by `padding` on every side: the
  content shifts by up to `padding` pixels each way), "flip" (mirrored left-right with
  probability 1/2), "crop_flip" (both) or "none" (the images unchanged). Digits want "crop":
  a mirrored digit can be another digit or none.
  """
  if kind == "none":
    return images
  batch, height, width, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  if kind in ("crop", "crop_flip"):
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * padding + 1)

    def crop(image, offset):
      return jax.lax.dynamic_slice(
        image, (offset[0], offset[1], 0), (height, width, image.shape[-1])
      )

    images = jax.vmap(crop)(padded, offsets)
  if kind == "crop":
    return images
  flip = jax.random.bernoulli(flip_key, 0.5, (batch, 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1, :], images)


def epoch_permutation(epoch: jax.Array, num_examples: int, key: jax.Array) -> jax.Array:
  """The order of the training examples in `epoch`: a permutation of range(num_examples)."""
  return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def batch_of_epoch(perm: jax.Array, step: jax.Array, batch_size: int) -> jax.Array:
  """Indices [batch_size] of train step `step`, a step of the epoch whose permutation is `perm`.

  The last len(perm) % batch_size examples of each (shuffled) epoch are dropped.
  """
  within = step % (perm.shape[0] // batch_size)
  return jax.lax.dynamic_slice_in_dim(perm, within * batch_size, batch_size)


def train_batch_indices(step: jax.Array, num_examples: int, batch_size: int, key: jax.Array):
  """Indices of the examples of train step `step`: a fresh permutation every epoch."""
  epoch = step // (num_examples // batch_size)
  return batch_of_epoch(epoch_permutation(epoch, num_examples, key), step, batch_size)


def pad_for_eval(images: np.ndarray, labels: np.ndarray, batch_size: int):
  """Pads to a multiple of batch_size; returns images, labels, mask (1 for real examples)."""
  n = len(labels)
  total = -(-n // batch_size) * batch_size
  pad = total - n
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
  labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
  return images, labels, mask


# ----------------------------------------------------------------------------- the feed


class InMemoryFeed:
  """The whole dataset replicated on the devices; each step picks its batch from the step number.

  Per-epoch shuffling, batch selection and augmentation run inside the jitted step, so nothing
  is prefetched and a resumed run sees exactly the batches an uninterrupted one would have.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    ds = load(config.data)
    self.config, self.mesh, self.ds = config, mesh, ds
    self.num_train = len(ds.train_labels)
    names = DATASETS.get(config.data.name)
    self.spec = DataSpec(
      ds.num_classes,
      ds.image_shape,
      tuple(map(float, ds.mean)),
      tuple(map(float, ds.std)),
      names.class_names if names and len(names.class_names) == ds.num_classes else (),
    )

  def _replicated(self, tree):
    sharding = NamedSharding(self.mesh, P())
    return jax.tree.map(
      lambda x: jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx]), tree
    )

  def train_step(self, update, first_step: int, teacher=None, steps_per_call: int = 1):
    """step(state, steps=1) -> (state, metrics): `steps` <= steps_per_call train steps, one call.

    steps_per_call = 1: one plain jitted step; scalar metrics. k > 1: one jitted loop whose trip
    count `steps` is an argument (one compiled function for every call size), each metric
    stacked [k] (row i: step i of the call; rows from `steps` on are zeros), each epoch's
    permutation (a sort of the whole training set) drawn once a call, not once a step. XLA
    compiles a step inside a loop a little differently from a step alone: the two agree to
    float round-off, not bit for bit; runs of one k repeat exactly. On XLA:CPU a loop runs about
    20x slower than its steps alone (measured): keep k = 1 on CPU. `teacher` (a pytree or None)
    goes to update unchanged, as an argument of the jitted step that is not donated.
    """
    del first_step  # the batch follows from state["step"]
    config, num_train = self.config, self.num_train
    data = self._replicated({"images": self.ds.train_images, "labels": self.ds.train_labels})
    batch_sharding = NamedSharding(self.mesh, P("data"))
    key = jax.random.key(config.seed)
    steps_per_epoch = num_train // config.batch_size
    spanned_epochs = (steps_per_call - 1) // steps_per_epoch + 2  # at most, by one call

    def one_step(state, data, teacher, perm):
      shuffle_key, augment_key = jax.random.split(key)
      if perm is None:  # a step alone draws its epoch's permutation
        perm = epoch_permutation(state["step"] // steps_per_epoch, num_train, shuffle_key)
      idx = batch_of_epoch(perm, state["step"], config.batch_size)
      idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
      images = augment(
        data["images"][idx], jax.random.fold_in(augment_key, state["step"]), config.data.augment
      )
      return update(state, images, data["labels"][idx], teacher)

    def train_steps(state, data, teacher, steps):
      shuffle_key = jax.random.split(key)[0]
      first_epoch = state["step"] // steps_per_epoch
      perms = jnp.stack(
        [epoch_permutation(first_epoch + e, num_train, shuffle_key) for e in range(spanned_epochs)]
      )
      perm_of = lambda state: perms[state["step"] // steps_per_epoch - first_epoch]
      shapes = jax.eval_shape(lambda s: one_step(s, data, teacher, perm_of(s))[1], state)
      rows = jax.tree.map(lambda s: jnp.zeros((steps_per_call, *s.shape), s.dtype), shapes)

      def body(i, carry):
        state, rows = carry
        state, metrics = one_step(state, data, teacher, perm_of(state))
        return state, jax.tree.map(lambda r, m: r.at[i].set(m), rows, metrics)

      return jax.lax.fori_loop(0, steps, body, (state, rows))

    if steps_per_call == 1:
      step = jax.jit(
        lambda state, data, teacher: one_step(state, data, teacher, None), donate_argnums=0
      )
      return lambda state, steps=1: step(state, data, teacher)
    step = jax.jit(train_steps, donate_argnums=0)
    return lambda state, steps=1: step(state, data, teacher, steps)

  def evaluator(self, eval_sums):
    size = self.config.eval_batch_size
    images, labels, mask = pad_for_eval(self.ds.test_images, self.ds.test_labels, size)
    data = self._replicated({"images": images, "labels": labels, "mask": mask})
    batch_sharding = NamedSharding(self.mesh, P("data"))

    def eval_step(state, data, index):
      def batch(a):
        out = jax.lax.dynamic_slice_in_dim(a, index * size, size)
        return jax.lax.with_sharding_constraint(out, batch_sharding)

      return eval_sums(state, batch(data["images"]), batch(data["labels"]), batch(data["mask"]))

    step = jax.jit(eval_step)
    num_batches = len(mask) // size
    return lambda state: summarize(step(state, data, i) for i in range(num_batches))
