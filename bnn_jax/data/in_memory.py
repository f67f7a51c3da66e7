"""Small image datasets held in memory and on the device; knows nothing of models.

Sources (config.data.name):
  cifar10        tensorflow-datasets `cifar10` (downloads; offline, put the original
                 `cifar-10-binary.tar.gz` in config.data.manual_dir)
  fashion_mnist  MNIST-format IDX files (optionally .gz) in config.data.path, by default
                 /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist)
  mnist          the same IDX layout; config.data.path is required
  npz            config.data.path holds train.npz and test.npz, each with `images` uint8
                 [N, H, W, C] (or [N, H, W]) and integer `labels` [N]; train.npz may declare
                 `num_classes` (a scalar; needed above MAX_UNDECLARED_CLASSES classes)
  fake           random class-dependent images for tests; no files

Every source's labels pass one validator (`check_labels`, `count_classes`): integers of shape
[N] in [0, 2**31), the number of classes the largest training label + 1 (or the declared count),
every test label one of the training set's classes. The inference command reads .npz files
with the same function (`read_npz`).

The whole dataset (uint8) is placed on the devices once. Per-epoch shuffling, batch selection and
augmentation (`augment`: pad-4 random crop and/or horizontal flip) then run on the device inside
the jitted train step, from the step counter alone: nothing to prefetch, nothing to starve, and a
resumed run sees exactly the batches it would have seen.
"""

import dataclasses
import gzip
import pathlib
import struct
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bnn_jax.data import DATASETS, DataSpec, summarize
from bnn_jax.errors import InputError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# The archive tfds looks for in manual_dir instead of downloading it.
TFDS_ARCHIVES = {"cifar10": "cifar-10-binary.tar.gz"}
AUGMENTATIONS = ("crop_flip", "crop", "flip", "none")
# Above this many classes (the largest label + 1) a dataset must declare its class count: a
# stray label of 1e9 would otherwise build a classifier head with 1e9 outputs.
MAX_UNDECLARED_CLASSES = 10_000


@dataclasses.dataclass
class InMemoryDataset:
  """Train and test images (uint8, NHWC) and labels (int32), with per-channel mean and std."""

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])

  @property
  def mean(self) -> np.ndarray:
    return self.train_images.reshape(-1, self.image_shape[-1]).mean(0) / 255.0

  @property
  def std(self) -> np.ndarray:
    return self.train_images.reshape(-1, self.image_shape[-1]).std(0) / 255.0


def _as_nhwc(images: np.ndarray) -> np.ndarray:
  return images[..., None] if images.ndim == 3 else images


# ----------------------------------------------------------------------------- IDX files


def _open_maybe_gz(path: pathlib.Path) -> bytes:
  try:
    if path.suffix == ".gz":
      with gzip.open(path, "rb") as f:
        return f.read()
    return path.read_bytes()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise InputError(f"data file {path} is truncated or corrupt ({e}); replace it") from e


def read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads an MNIST-format IDX file of unsigned bytes (magic 0x0801 or 0x0803)."""
  raw = _open_maybe_gz(path)
  if len(raw) < 8 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] not in (1, 3):
    raise InputError(
      f"data file {path} is not an IDX file of unsigned bytes (expected magic 0x00000801 "
      f"or 0x00000803)"
    )
  ndim = raw[3]
  if len(raw) < 4 + 4 * ndim:
    raise InputError(
      f"data file {path} is truncated or corrupt: its header declares {ndim} dimensions "
      f"({4 + 4 * ndim} bytes of header), the file holds {len(raw)} bytes"
    )
  dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
  expected = int(np.prod(dims))
  data = raw[4 + 4 * ndim :]
  if len(data) != expected:
    raise InputError(
      f"data file {path} is truncated or corrupt: its header promises {expected} bytes of "
      f"data for shape {dims}, the file holds {len(data)}"
    )
  return np.frombuffer(data, np.uint8).reshape(dims)


def _find(folder: pathlib.Path, stem: str) -> pathlib.Path:
  for name in (stem, stem + ".gz"):
    if (folder / name).exists():
      return folder / name
  raise InputError(f"data folder {folder} has no {stem} (or {stem}.gz); expected the MNIST layout")


def load_idx_folder(path: str, num_classes: int | None = None) -> InMemoryDataset:
  """MNIST / Fashion-MNIST IDX files: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz].

  num_classes: the dataset's declared class count (10 for both); labels must lie below it.
  """
  folder = pathlib.Path(path)
  if not folder.is_dir():
    raise InputError(
      f"data.path {str(folder)!r} is not a folder; give the folder of the IDX files "
      f"(Fashion-MNIST: apt-get install dataset-fashion-mnist puts them in {FASHION_MNIST_DIR})"
    )
  arrays = {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise InputError(
        f"IDX files of the {split} split in {folder} disagree: images {images.shape}, "
        f"labels {labels.shape}"
      )
    arrays[split] = (_as_nhwc(images), labels)
  return _dataset(arrays, f"data folder {folder}", num_classes)


# ----------------------------------------------------------------------------- .npz files


def read_npz(file: pathlib.Path, labels_required: bool = True):
  """(images uint8 [N, H, W, C], labels int32 [N] or None, declared class count or None).

  The .npz holds `images` uint8 [N, H, W] or [N, H, W, C], `labels` (optional when
  labels_required is False) and optionally `num_classes`. Labels pass `check_labels`; any
  problem raises InputError naming the file.
  """
  file = pathlib.Path(file)
  try:
    with np.load(file) as z:
      needed = ("images", "labels") if labels_required else ("images",)
      if any(k not in z for k in needed):
        raise InputError(
          f"{file} must hold arrays {' and '.join(map(repr, needed))}; it holds {z.files}"
        )
      images = z["images"]
      labels = z["labels"] if "labels" in z else None
      declared = z["num_classes"] if "num_classes" in z else None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    if isinstance(e, InputError):
      raise
    raise InputError(f"data file {file} is truncated or corrupt ({e}); replace it") from e
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise InputError(
      f"{file}: 'images' must be uint8 [N, H, W] or [N, H, W, C]; got {images.dtype} {images.shape}"
    )
  if labels is not None:
    labels = check_labels(labels, len(images), f"{file}")
  if declared is not None:
    if declared.shape != () or declared.dtype.kind not in "iu" or int(declared) < 1:
      raise InputError(f"{file}: 'num_classes' must be one integer >= 1; got {declared!r}")
    declared = int(declared)
  return _as_nhwc(images), labels, declared


def load_npz_folder(path: str) -> InMemoryDataset:
  """train.npz and test.npz with `images` uint8 [N, H, W(, C)] and `labels` [N] (`read_npz`)."""
  folder = pathlib.Path(path)
  if not folder.is_dir():
    raise InputError(f"data.path {str(folder)!r} is not a folder holding train.npz and test.npz")
  arrays, declared = {}, None
  for split in ("train", "test"):
    file = folder / f"{split}.npz"
    if not file.exists():
      raise InputError(f"data folder {folder} has no {split}.npz")
    images, labels, split_declared = read_npz(file)
    declared = split_declared if split == "train" else declared
    arrays[split] = (images, labels)
  return _dataset(arrays, f"data folder {folder}", declared)


# ----------------------------------------------------------------------------- tfds


def load_tfds(name: str, data: ml_collections.ConfigDict) -> InMemoryDataset:
  """A tfds image classification dataset, both splits read whole into memory."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  # tfds only reads files here; keep TensorFlow off the accelerators JAX uses.
  tf.config.set_visible_devices([], "GPU")
  kwargs = {}
  archive = TFDS_ARCHIVES.get(name)
  if data.manual_dir and archive and not (pathlib.Path(data.manual_dir) / archive).is_file():
    raise InputError(
      f"data.manual_dir {data.manual_dir!r} has no {archive}; put the original archive there "
      f"(tfds then prepares {name} without downloading)"
    )
  if data.manual_dir:
    kwargs["download_and_prepare_kwargs"] = {
      "download_config": tfds.download.DownloadConfig(manual_dir=data.manual_dir)
    }
  arrays = {}
  try:
    for split in ("train", "test"):
      # Read in batches and concatenate: batch_size=-1 (one tensor) crashes under mock_data.
      ds = tfds.load(
        name,
        split=split,
        batch_size=1024,
        as_supervised=True,
        data_dir=data.tfds_data_dir or None,
        **kwargs,
      )
      batches = list(tfds.as_numpy(ds))
      images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
      labels = np.concatenate([b[1] for b in batches])
      arrays[split] = (_as_nhwc(images), labels)
  except Exception as e:  # tfds raises many types for "cannot download or find the data"
    raise InputError(
      f"tensorflow-datasets could not load {name!r} ({type(e).__name__}: {str(e)[:300]}); on a "
      f"machine without internet put the original archive in data.manual_dir"
    ) from e
  return _dataset(arrays, f"tfds {name}", DATASETS[name].num_classes)


# ----------------------------------------------------------------------------- fake


def load_fake(data: ml_collections.ConfigDict) -> InMemoryDataset:
  """Random images whose per-class mean differs: learnable, small, no files."""
  rng = np.random.default_rng(data.fake_seed)
  height, width, channels = data.fake_image_shape
  num_classes = data.fake_num_classes
  class_means = rng.uniform(64, 192, size=(num_classes, 1, 1, channels))
  arrays = {}
  for split, n in (("train", data.fake_train_size), ("test", data.fake_test_size)):
    labels = rng.integers(0, num_classes, size=n).astype(np.int32)
    noise = rng.normal(0, 48, size=(n, height, width, channels))
    images = np.clip(class_means[labels] + noise, 0, 255).astype(np.uint8)
    arrays[split] = (images, labels)
  return _dataset(arrays, "fake data", num_classes)


def check_labels(labels, num_images: int, source: str) -> np.ndarray:
  """`labels` as int32 [N]; InputError unless they are num_images integers in [0, 2**31).

  Float labels are refused rather than truncated, and int64 labels beyond int32 rather than
  wrapped; an [N, 1] array is refused rather than silently squeezed.
  """
  labels = np.asarray(labels)
  if labels.shape != (num_images,):
    column = labels.shape == (num_images, 1)
    raise InputError(
      f"{source}: labels have shape {labels.shape}; they must be one integer per image, shape "
      f"({num_images},)" + (" (save labels.reshape(-1) instead)" if column else "")
    )
  if labels.dtype.kind not in "iu":
    raise InputError(
      f"{source}: labels are {labels.dtype}; they must be integer class indices (0, 1, 2, ...), "
      f"not floats or other values to be rounded"
    )
  if len(labels) and labels.min() < 0:
    raise InputError(f"{source}: label {labels.min()} is negative; labels must be 0, 1, 2, ...")
  if len(labels) and labels.max() >= 2**31:
    raise InputError(f"{source}: label {labels.max()} is too large; labels must be below 2**31")
  return labels.astype(np.int32)


def count_classes(train_labels: np.ndarray, source: str, declared: int | None = None) -> int:
  """The number of classes: the declared count, else the largest training label + 1.

  An undeclared count above MAX_UNDECLARED_CLASSES raises InputError (a stray label must not
  build a head with a billion outputs), as does a label at or above the declared count.
  """
  largest = int(train_labels.max())
  if declared is not None:
    if largest >= declared:
      raise InputError(
        f"{source}: training label {largest} is outside the {declared} declared classes "
        f"(labels 0..{declared - 1})"
      )
    return declared
  if largest + 1 > MAX_UNDECLARED_CLASSES:
    raise InputError(
      f"{source}: the largest training label is {largest}, which would make {largest + 1:,} "
      f"classes; above {MAX_UNDECLARED_CLASSES:,} classes declare the count (a scalar "
      f"'num_classes' in train.npz)"
    )
  return largest + 1


def _dataset(arrays, source: str, num_classes: int | None = None) -> InMemoryDataset:
  """Checks both splits' images and labels; num_classes: the declared count, if any."""
  (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
  if xtr.shape[1:] != xte.shape[1:]:
    raise InputError(
      f"{source}: train images {xtr.shape[1:]} and test images {xte.shape[1:]} differ"
    )
  if len(ytr) == 0 or len(yte) == 0:
    raise InputError(f"{source}: a split is empty (train {len(ytr)}, test {len(yte)})")
  ytr = check_labels(ytr, len(xtr), f"{source}, train split")
  yte = check_labels(yte, len(xte), f"{source}, test split")
  num_classes = count_classes(ytr, source, num_classes)
  if yte.max() >= num_classes:
    raise InputError(
      f"{source}: test label {yte.max()} is not one of the {num_classes} classes of the "
      f"training set (labels 0..{num_classes - 1})"
    )
  logging.info(
    "%s: %d training and %d test images of %s, %d classes.",
    source,
    len(ytr),
    len(yte),
    "x".join(map(str, xtr.shape[1:])),
    num_classes,
  )
  return InMemoryDataset(xtr, ytr, xte, yte, num_classes)


BUNDLED_DIR = pathlib.Path(__file__).parent / "fashion_mnist_small"


def load(data: ml_collections.ConfigDict) -> InMemoryDataset:
  """Loads config.data; bad names, folders and files raise InputError before anything compiles."""
  name = data.name
  if name == "cifar10":
    ds = load_tfds("cifar10", data)
  elif name == "fashion_mnist":
    ds = load_idx_folder(data.path or FASHION_MNIST_DIR, DATASETS[name].num_classes)
  elif name == "mnist":
    if not data.path:
      raise InputError("data.name 'mnist' needs data.path, the folder of the MNIST IDX files")
    ds = load_idx_folder(data.path, DATASETS[name].num_classes)
  elif name == "fashion_mnist_small":
    ds = load_npz_folder(str(BUNDLED_DIR))
  elif name == "npz":
    ds = load_npz_folder(data.path)
  elif name == "fake":
    ds = load_fake(data)
  else:
    raise InputError(f"unknown data.name {name!r}; allowed: {', '.join(DATASETS)}")
  if data.train_subset:
    ds.train_images = ds.train_images[: data.train_subset]
    ds.train_labels = ds.train_labels[: data.train_subset]
  return ds


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
