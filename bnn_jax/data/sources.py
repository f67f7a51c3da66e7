"""The in-memory datasets' sources (IDX, .npz, tfds, fake) and their label validation.

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
"""

import dataclasses
import gzip
import os
import pathlib
import shutil
import socket
import struct
import threading
import urllib.parse
import zipfile

import ml_collections
import numpy as np
from absl import logging

from bnn_jax.data import DATASETS
from bnn_jax.errors import InputError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# The archive tfds looks for in manual_dir instead of downloading it.
TFDS_ARCHIVES = {"cifar10": "cifar-10-binary.tar.gz"}
# Where tfds downloads it from, and the page a person fetches it from.
ARCHIVE_URLS = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"}
ARCHIVE_PAGES = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar.html"}
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


# The light install (pip install -e .) has neither TensorFlow nor tensorflow-datasets.
TFDS_EXTRA = (
  "data.name {name!r} is read with tensorflow-datasets, which this install lacks; add the tfds "
  'extra: pip install -e ".[tfds]"'
)


def load_tfds(name: str, data: ml_collections.ConfigDict) -> InMemoryDataset:
  """A tfds image classification dataset, both splits read whole into memory.

  Before TensorFlow is imported (seconds) or tfds downloads anything: without tfds, without the
  archive in data.manual_dir, or unprepared and offline, one sentence (InputError) says what to
  do, and no folder is created.
  """
  try:
    import tensorflow_datasets as tfds  # without TensorFlow: under a second
  except ImportError as e:
    raise InputError(TFDS_EXTRA.format(name=name)) from e
  archive = TFDS_ARCHIVES.get(name)
  if data.manual_dir and archive and not (pathlib.Path(data.manual_dir) / archive).is_file():
    raise InputError(
      f"data.manual_dir {data.manual_dir} has no {archive}; put the original archive "
      f"({ARCHIVE_PAGES[name]}) in that folder and tfds prepares {name} from it"
    )
  if not data.manual_dir and _would_download(tfds, name, data) and not _reachable(name):
    raise InputError(_offline_sentence(name, data))
  try:
    import tensorflow as tf
  except ImportError as e:
    raise InputError(TFDS_EXTRA.format(name=name)) from e

  # tfds only reads files here; keep TensorFlow off the accelerators JAX uses.
  tf.config.set_visible_devices([], "GPU")
  kwargs = {}
  if data.manual_dir:
    kwargs["download_and_prepare_kwargs"] = {
      "download_config": tfds.download.DownloadConfig(manual_dir=data.manual_dir)
    }
  arrays = {}
  data_dir = pathlib.Path(_data_dir(data))
  new_folders = [f for f in (data_dir, data_dir / "downloads", data_dir / name) if not f.exists()]
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
    for folder in new_folders:  # a failed preparation leaves no folders behind
      shutil.rmtree(folder, ignore_errors=True)
    first_line = (str(e).strip().splitlines() or [""])[0][:300]
    source = f"{pathlib.Path(data.manual_dir) / archive}" if data.manual_dir else "the internet"
    raise InputError(
      f"tensorflow-datasets could not prepare {name} from {source} ({type(e).__name__}: "
      f"{first_line}); it needs the original {archive} from {ARCHIVE_PAGES[name]}"
    ) from e
  return _dataset(arrays, f"tfds {name}", DATASETS[name].num_classes)


def _would_download(tfds, name: str, data: ml_collections.ConfigDict) -> bool:
  """Whether tfds.load would download `name`: it is not prepared in the data_dir.

  tfds.testing.mock_data replaces download_and_prepare: then nothing is downloaded.
  """
  prepare = tfds.core.DatasetBuilder.download_and_prepare
  if not getattr(prepare, "__module__", "").startswith("tensorflow_datasets.core"):
    return False
  # Reads the data_dir only; creates nothing (the folders come with download_and_prepare).
  # Its warnings about the folders it looks in would precede the sentence this leads to.
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    return not tfds.builder(name, data_dir=data.tfds_data_dir or None).is_prepared()
  finally:
    logging.set_verbosity(verbosity)


def _reachable(name: str, timeout: float = 5.0) -> bool:
  """Whether the archive's host accepts a connection within `timeout` seconds.

  Offline, tfds would retry its download for minutes; this answers in at most `timeout`
  (a thread, since name lookups take no timeout).
  """
  host = urllib.parse.urlparse(ARCHIVE_URLS[name]).hostname
  answer = []

  def probe():
    try:
      socket.create_connection((host, 443), timeout=timeout).close()
      answer.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout)
  return bool(answer)


def _data_dir(data: ml_collections.ConfigDict) -> str:
  """The folder tfds prepares datasets in: data.tfds_data_dir, else tfds' default."""
  default = os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return os.path.expanduser(data.tfds_data_dir or default)


def _offline_sentence(name: str, data: ml_collections.ConfigDict) -> str:
  data_dir = _data_dir(data)
  host = urllib.parse.urlparse(ARCHIVE_URLS[name]).hostname
  return (
    f"{name} is not prepared in {data_dir} and {host} cannot be reached to download it; fetch "
    f"{TFDS_ARCHIVES[name]} from {ARCHIVE_PAGES[name]}, put it in a folder and add "
    f"--config.data.manual_dir=FOLDER (or give train.npz and test.npz with "
    f"--config.data.name=npz --config.data.path=FOLDER)"
  )


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
