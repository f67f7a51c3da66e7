"""Small image datasets held in memory and on the device; knows nothing of models.

The datasets come from `bnn_jax.data.sources`. The whole dataset (uint8) is placed on the devices
once. Per-epoch shuffling (one jitted call per epoch), batch selection and augmentation
(`augment`: pad-4 random crop and/or horizontal flip; then, where switched on, `cutout` and one
of `mixup` and `cutmix`) then run on the device, the last two inside the jitted train step, from
the step counter alone: nothing to prefetch, nothing to starve, and a resumed run sees exactly
the batches it would have seen.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bnn_jax.data import DATASETS, DataSpec, summarize
from bnn_jax.data.sources import load

AUGMENTATIONS = ("crop_flip", "crop", "flip", "none")
SWITCHES = ("cutout", "mixup_alpha", "cutmix_alpha")  # config.data keys of mix_and_cut; 0 = off


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


def cutout(images: jax.Array, key: jax.Array, size: int, fill: jax.Array) -> jax.Array:
  """Cutout (DeVries & Taylor 2017): per image, a size x size square set to `fill` [C].

  The square's centre is uniform over the image's pixels; the square covers rows and columns
  [centre - size // 2, centre - size // 2 + size), clipped at the border (so a square near the
  edge is smaller). The rest of the image is unchanged; dtype and shape are kept.
  """
  batch, height, width, _ = images.shape
  centres = jax.random.randint(key, (batch, 2), 0, jnp.array([height, width]))
  start = centres - size // 2  # [B, 2]
  rows = jnp.arange(height)[None, :]
  cols = jnp.arange(width)[None, :]
  in_rows = (rows >= start[:, :1]) & (rows < start[:, :1] + size)  # [B, H]
  in_cols = (cols >= start[:, 1:]) & (cols < start[:, 1:] + size)  # [B, W]
  square = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return jnp.where(square, fill.astype(images.dtype), images)


def mixup(images: jax.Array, key: jax.Array, alpha: float):
  """Mixup (Zhang et al. 2018): (lam * x + (1 - lam) * x[perm] float32, lam, perm).

  lam ~ Beta(alpha, alpha), one per batch; perm a random permutation of the batch (the partner
  of example i is example perm[i]). Mixed in pixel units (0..255): normalization is affine, so
  this is mixing the normalized images (up to float rounding).
  """
  lam_key, perm_key = jax.random.split(key)
  lam = jax.random.beta(lam_key, alpha, alpha)
  perm = jax.random.permutation(perm_key, images.shape[0])
  x = images.astype(jnp.float32)
  return lam * x + (1 - lam) * x[perm], lam, perm


def cutmix(images: jax.Array, key: jax.Array, alpha: float):
  """CutMix (Yun et al. 2019): (images with a box pasted from x[perm], lam, perm).

  One box per batch: side ratio sqrt(1 - l) of the image's height and width (rounded down) for
  l ~ Beta(alpha, alpha), centre uniform over the pixels, clipped at the border. lam is the
  share of the image left to the original: 1 - (box area after clipping) / (image area). The
  images keep their dtype (uint8).
  """
  lam_key, box_key, perm_key = jax.random.split(key, 3)
  _, height, width, _ = images.shape
  share = jax.random.beta(lam_key, alpha, alpha)
  ratio = jnp.sqrt(1.0 - share)
  box_h = jnp.floor(height * ratio).astype(jnp.int32)
  box_w = jnp.floor(width * ratio).astype(jnp.int32)
  cy, cx = jax.random.randint(box_key, (2,), 0, jnp.array([height, width]))
  y0, y1 = jnp.clip(cy - box_h // 2, 0, height), jnp.clip(cy + box_h - box_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - box_w // 2, 0, width), jnp.clip(cx + box_w - box_w // 2, 0, width)
  rows, cols = jnp.arange(height), jnp.arange(width)
  box = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
  perm = jax.random.permutation(perm_key, images.shape[0])
  lam = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
  return jnp.where(box[None, :, :, None], images[perm], images), lam, perm


def mix_and_cut(images, labels, key, data_config, fill):
  """The switches after crop and flip: (images, mix), mix None or {"labels", "lam"} [B].

  data_config.cutout > 0: `cutout` with the dataset's mean pixel `fill` (which normalization
  turns into about 0, as the original zeroes normalized images). data_config.mixup_alpha or
  cutmix_alpha > 0 (at most one, config_checks): `mixup` or `cutmix`; mix holds each example's
  partner label and lam, for the loss lam * CE(labels) + (1 - lam) * CE(mix["labels"]). Keys:
  fold_in(key, 1) and fold_in(key, 2), key being the step's (crop and flip use key itself).
  All off: the images unchanged and mix None.
  """
  size = data_config.get("cutout", 0)
  if size:
    images = cutout(images, jax.random.fold_in(key, 1), size, jnp.asarray(fill))
  mixup_alpha = data_config.get("mixup_alpha", 0.0)
  cutmix_alpha = data_config.get("cutmix_alpha", 0.0)
  if not (mixup_alpha or cutmix_alpha):
    return images, None
  mixer, alpha = (mixup, mixup_alpha) if mixup_alpha else (cutmix, cutmix_alpha)
  images, lam, perm = mixer(images, jax.random.fold_in(key, 2), alpha)
  return images, {"labels": labels[perm], "lam": jnp.full(labels.shape, lam, jnp.float32)}


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

  Batch selection and augmentation run inside the jitted step, the epoch's shuffling on the
  device once an epoch, so nothing is prefetched and a resumed run sees exactly the batches an
  uninterrupted one would have.
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

    The first call gets the state of step `first_step`, each later one the state the call
    before returned (the training loop's order; a resumed run starts a new step function).
    Each epoch's permutation (a sort of the whole training set) is drawn once, in its own
    jitted call when the epoch starts, and handed to the step with the step's other arguments:
    drawn inside every step it took 26-62 ms of a 320-650 ms CPU trainer step at CIFAR-10's
    50,000 images, 0.4-0.7 ms once an epoch (benchmarks/trainer_parts.py, loaded 2-core CPU).
    The permutation follows from the epoch alone, so the batches are those of
    train_batch_indices either way.

    steps_per_call = 1: one plain jitted step; scalar metrics. k > 1: one jitted loop whose trip
    count `steps` is an argument (one compiled function for every call size), each metric
    stacked [k] (row i: step i of the call; rows from `steps` on are zeros). XLA compiles a step
    inside a loop a little differently from a step alone (other fusions, other orders of float
    sums): the same batches, losses that agree to float round-off, not bit for bit (a binary net
    amplifies the round-off over the steps); runs of one k repeat exactly. On XLA:CPU a loop runs
    about 20x slower than its steps alone (measured): keep k = 1 on CPU. `teacher` (a pytree or
    None) goes to update unchanged, as an argument of the jitted step that is not donated.
    """
    config, num_train = self.config, self.num_train
    data = self._replicated({"images": self.ds.train_images, "labels": self.ds.train_labels})
    batch_sharding = NamedSharding(self.mesh, P("data"))
    key = jax.random.key(config.seed)
    steps_per_epoch = num_train // config.batch_size
    fill = np.round(np.asarray(self.spec.mean) * 255).astype(np.uint8)  # cutout: the mean pixel
    # The epochs one call can reach: its first step's and, for k > 1, the ones after it.
    spanned_epochs = 1 if steps_per_call == 1 else (steps_per_call - 1) // steps_per_epoch + 2

    @functools.partial(jax.jit, out_shardings=NamedSharding(self.mesh, P()))  # on every device
    def permutations(first_epoch):  # [spanned_epochs, num_train]: the epochs from first_epoch
      shuffle_key = jax.random.split(key)[0]
      epochs = [first_epoch + e for e in range(spanned_epochs)]
      return jnp.stack([epoch_permutation(e, num_train, shuffle_key) for e in epochs])

    def one_step(state, data, teacher, perm):
      augment_key = jax.random.split(key)[1]
      idx = batch_of_epoch(perm, state["step"], config.batch_size)
      idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
      step_key = jax.random.fold_in(augment_key, state["step"])
      images, mix = augment(data["images"][idx], step_key, config.data.augment), None
      if any(config.data.get(k, 0) for k in SWITCHES):  # off: the program traced before them
        images, mix = mix_and_cut(images, data["labels"][idx], step_key, config.data, fill)
      return update(state, images, data["labels"][idx], teacher, mix)

    def train_steps(state, data, teacher, steps, perms, first_epoch):
      perm_of = lambda state: perms[state["step"] // steps_per_epoch - first_epoch]
      shapes = jax.eval_shape(lambda s: one_step(s, data, teacher, perm_of(s))[1], state)
      rows = jax.tree.map(lambda s: jnp.zeros((steps_per_call, *s.shape), s.dtype), shapes)

      def body(i, carry):
        state, rows = carry
        state, metrics = one_step(state, data, teacher, perm_of(state))
        return state, jax.tree.map(lambda r, m: r.at[i].set(m), rows, metrics)

      return jax.lax.fori_loop(0, steps, body, (state, rows))

    if steps_per_call == 1:
      jitted = jax.jit(
        lambda state, data, teacher, perms, first_epoch: one_step(state, data, teacher, perms[0]),
        donate_argnums=0,
      )
    else:
      jitted = jax.jit(train_steps, donate_argnums=0)
    now = {"step": first_step, "epoch": None, "args": ()}  # the host's copy of the step

    def step(state, steps=1):
      epoch = now["step"] // steps_per_epoch
      if epoch != now["epoch"]:  # the epoch's first call: its permutations, on the device
        first_epoch = jnp.int32(epoch)
        now["epoch"], now["args"] = epoch, (permutations(first_epoch), first_epoch)
      if steps_per_call == 1:
        out = jitted(state, data, teacher, *now["args"])
      else:
        out = jitted(state, data, teacher, steps, *now["args"])
      now["step"] += steps
      return out

    return step

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
