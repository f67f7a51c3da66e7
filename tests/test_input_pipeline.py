"""Data sources, bad files, on-device batching and augmentation, the tfds CIFAR-10 path."""

import gzip
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import run, train
from bnn_jax.data import in_memory, sources
from bnn_jax.errors import InputError


def _idx_bytes(array: np.ndarray) -> bytes:
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
    f">{array.ndim}I", *array.shape
  )
  return header + array.astype(np.uint8).tobytes()


def _write_mnist_folder(folder, n_train=12, n_test=5, compress=True):
  rng = np.random.default_rng(0)
  files = {}
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    files[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    files[f"{prefix}-labels-idx1-ubyte"] = (np.arange(n) % 10).astype(np.uint8)  # all classes
  for name, array in files.items():
    data = _idx_bytes(array)
    if compress:
      (folder / f"{name}.gz").write_bytes(gzip.compress(data))
    else:
      (folder / name).write_bytes(data)
  return files


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_round_trip(tmp_path, compress):
  files = _write_mnist_folder(tmp_path, compress=compress)
  ds = sources.load_idx_folder(str(tmp_path))
  np.testing.assert_array_equal(ds.train_images[..., 0], files["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(ds.test_labels, files["t10k-labels-idx1-ubyte"])
  assert ds.image_shape == (28, 28, 1)


def test_truncated_idx_file_names_the_file(tmp_path):
  _write_mnist_folder(tmp_path, compress=False)
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(InputError, match="train-images-idx3-ubyte is truncated or corrupt"):
    sources.load_idx_folder(str(tmp_path))


def test_corrupt_gzip_and_bad_magic_are_reported(tmp_path):
  _write_mnist_folder(tmp_path)
  gz = tmp_path / "t10k-labels-idx1-ubyte.gz"
  gz.write_bytes(gz.read_bytes()[:20])
  with pytest.raises(InputError, match="t10k-labels-idx1-ubyte.gz is truncated or corrupt"):
    sources.load_idx_folder(str(tmp_path))
  gz.write_bytes(gzip.compress(b"PK\x03\x04 not an idx file"))
  with pytest.raises(InputError, match="is not an IDX file"):
    sources.load_idx_folder(str(tmp_path))


def test_missing_folder_and_missing_file(tmp_path):
  with pytest.raises(InputError, match="is not a folder; give the folder of the IDX files"):
    sources.load_idx_folder(str(tmp_path / "nowhere"))
  with pytest.raises(InputError, match="has no train-images-idx3-ubyte"):
    sources.load_idx_folder(str(tmp_path))


def test_npz_folder_and_its_errors(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (("train", 10), ("test", 4)):
    np.savez(
      tmp_path / f"{split}.npz",
      images=rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
      labels=np.arange(n) % 10,  # the training set has every class of the test set
    )
  ds = sources.load_npz_folder(str(tmp_path))
  assert ds.image_shape == (32, 32, 3) and len(ds.train_labels) == 10
  (tmp_path / "test.npz").write_bytes((tmp_path / "test.npz").read_bytes()[:50])
  with pytest.raises(InputError, match="test.npz is truncated or corrupt"):
    sources.load_npz_folder(str(tmp_path))
  np.savez(tmp_path / "test.npz", pixels=np.zeros((2, 4, 4), np.uint8))
  with pytest.raises(InputError, match="must hold arrays 'images' and 'labels'"):
    sources.load_npz_folder(str(tmp_path))


# ----------------------------------------------------------------------------- label validation


def _save_npz(folder, train_labels, test_labels, **extra):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for split, labels in (("train", train_labels), ("test", test_labels)):
    images = rng.integers(0, 256, (len(labels), 4, 4), np.uint8)
    np.savez(folder / f"{split}.npz", images=images, labels=labels, **extra)
  return str(folder)


@pytest.mark.parametrize(
  "train_labels,message",
  [
    (np.array([0.0, 1.7, 2.0]), "labels are float64; they must be integer class indices"),
    (np.array([0, 2**31, 1], np.int64), "label 2147483648 is too large; labels must be below"),
    (np.array([0, -1, 1]), "label -1 is negative"),
    (np.array([[0], [1], [2]]), r"shape \(3, 1\); .* shape \(3,\) \(save labels.reshape\(-1\)"),
    (np.array([0, 1]), r"labels have shape \(2,\); .* shape \(3,\)"),
    (np.array([0, 10**9, 1]), "largest training label is 1000000000, .* declare the count"),
  ],
)
def test_bad_labels_are_refused_not_converted(tmp_path, train_labels, message):
  folder = tmp_path / "data"
  folder.mkdir()
  rng = np.random.default_rng(0)
  np.savez(
    folder / "train.npz", images=rng.integers(0, 256, (3, 4, 4), np.uint8), labels=train_labels
  )
  np.savez(folder / "test.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))
  with pytest.raises(InputError, match=message):
    sources.load_npz_folder(str(folder))


def test_classes_are_the_largest_label_plus_one_and_stated(tmp_path, caplog):
  caplog.set_level("INFO")
  ds = sources.load_npz_folder(_save_npz(tmp_path, np.array([0, 3, 9, 9]), np.array([1, 9])))
  assert ds.num_classes == 10 and ds.train_labels.dtype == np.int32
  assert "4 training and 2 test images of 4x4x1, 10 classes." in caplog.text


def test_test_labels_must_be_classes_of_the_training_set(tmp_path):
  folder = _save_npz(tmp_path, np.array([0, 1, 2]), np.array([1, 3]))
  with pytest.raises(InputError, match=r"test label 3 is not one of the 3 classes of the training"):
    sources.load_npz_folder(folder)


def test_declared_class_count(tmp_path):
  many = np.array([0, 20_000, 5])
  ds = sources.load_npz_folder(_save_npz(tmp_path / "a", many, many[:2], num_classes=20_001))
  assert ds.num_classes == 20_001
  with pytest.raises(InputError, match="training label 20000 is outside the 300 declared classes"):
    sources.load_npz_folder(_save_npz(tmp_path / "b", many, many[:2], num_classes=300))
  few = sources.load_npz_folder(
    _save_npz(tmp_path / "c", np.array([0, 1]), np.array([1]), num_classes=5)
  )
  assert few.num_classes == 5  # declared classes may have no example yet


def test_idx_labels_beyond_the_declared_ten_classes(tmp_path):
  files = _write_mnist_folder(tmp_path, compress=False)
  labels = files["train-labels-idx1-ubyte"].copy()
  labels[3] = 12
  (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
  assert sources.load_idx_folder(str(tmp_path)).num_classes == 13  # nothing declared
  with pytest.raises(InputError, match="training label 12 is outside the 10 declared classes"):
    sources.load_idx_folder(str(tmp_path), num_classes=10)


def test_idx_header_shorter_than_declared(tmp_path):
  _write_mnist_folder(tmp_path, compress=False)
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(path.read_bytes()[:10])  # magic says 3 dimensions: 16 bytes of header
  with pytest.raises(InputError, match=r"header declares 3 dimensions \(16 bytes of header\), the"):
    sources.load_idx_folder(str(tmp_path))


def test_mnist_config_crops_and_reads_an_idx_folder_of_ten_classes(tmp_path):
  from bnn_jax import config_checks
  from configs import mnist

  config = mnist.get_config()
  assert config.data.augment == "crop"  # digits are shifted, never mirrored
  _write_mnist_folder(tmp_path)
  config.data.path = str(tmp_path)
  config_checks.check_config(config, num_devices=1)
  ds = sources.load(config.data)
  assert ds.num_classes == 10 and ds.image_shape == (28, 28, 1)


def test_fake_data_is_deterministic_and_subset_applies(test_config):
  a = sources.load(test_config.data)
  b = sources.load(test_config.data)
  np.testing.assert_array_equal(a.train_images, b.train_images)
  assert a.image_shape == (8, 8, 3) and a.num_classes == 4
  test_config.data.train_subset = 10
  assert len(sources.load(test_config.data).train_labels) == 10


def test_unknown_dataset_name(test_config):
  test_config.data.name = "imagenet9000"
  with pytest.raises(InputError, match="unknown data.name 'imagenet9000'; allowed: cifar10"):
    sources.load(test_config.data)


def test_train_batches_cover_each_epoch_once_and_reshuffle():
  key = jax.random.key(0)
  epoch0 = np.concatenate([in_memory.train_batch_indices(s, 20, 4, key) for s in range(5)])
  epoch1 = np.concatenate([in_memory.train_batch_indices(s, 20, 4, key) for s in range(5, 10)])
  assert sorted(epoch0) == list(range(20)) and sorted(epoch1) == list(range(20))
  assert list(epoch0) != list(epoch1)


# ----------------------------------------------------------------------------- augmentation

PAD = 2


def _random_images(n=64, size=6, channels=2):
  """Random images without zeros: any shift, flip or zero padding is visible in the output."""
  return np.random.default_rng(0).integers(1, 256, (n, size, size, channels), dtype=np.uint8)


def _window_offset(out, image, mirrored=False):
  """(dy, dx) in [0, 2 * PAD] such that `out` is that window of the zero-padded image (mirrored
  first when `mirrored`); None when none is."""
  source = image[:, ::-1] if mirrored else image
  padded = np.pad(source, ((PAD, PAD), (PAD, PAD), (0, 0)))
  size = image.shape[0]
  for dy in range(2 * PAD + 1):
    for dx in range(2 * PAD + 1):
      if np.array_equal(out, padded[dy : dy + size, dx : dx + size]):
        return dy, dx
  return None


def _augmented(kind, images):
  out = np.asarray(in_memory.augment(jnp.asarray(images), jax.random.key(7), kind, padding=PAD))
  assert out.shape == images.shape and out.dtype == np.uint8
  return out


def test_augment_none_returns_the_input():
  images = _random_images()
  np.testing.assert_array_equal(_augmented("none", images), images)


def test_augment_crop_shifts_content_by_the_offset_and_never_mirrors():
  images = _random_images()
  out = _augmented("crop", images)
  offsets = [_window_offset(o, i) for o, i in zip(out, images)]
  assert None not in offsets  # every output is a shifted window of its own, unmirrored image
  assert all(_window_offset(o, i, mirrored=True) is None for o, i in zip(out, images))
  shifts = {(dy - PAD, dx - PAD) for dy, dx in offsets}
  assert len(shifts) > 10  # offsets vary per image
  assert {dy for dy, _ in shifts} == set(range(-PAD, PAD + 1))  # every shift -2..2 is drawn
  assert {dx for _, dx in shifts} == set(range(-PAD, PAD + 1))
  # The shift moves the content: pixel (y, x) of the output is pixel (y + dy, x + dx) of the image.
  dy, dx = next(s for s in sorted(shifts) if s[0] > 0 and s[1] > 0)
  i = [(a - PAD, b - PAD) for a, b in offsets].index((dy, dx))
  np.testing.assert_array_equal(out[i, : 6 - dy, : 6 - dx], images[i, dy:, dx:])
  assert not out[i, 6 - dy :].any()  # the zero padding shows where the image ended


def test_augment_flip_mirrors_some_images_exactly_and_leaves_the_others():
  images = _random_images()
  out = _augmented("flip", images)
  mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  unchanged = [np.array_equal(o, i) for o, i in zip(out, images)]
  assert all(m != u for m, u in zip(mirrored, unchanged))  # each image exactly one of the two
  assert 16 < sum(mirrored) < 48  # about half of the 64


def test_augment_crop_flip_shifts_and_mirrors():
  images = _random_images()
  out = _augmented("crop_flip", images)
  plain = [_window_offset(o, i) for o, i in zip(out, images)]
  mirror = [_window_offset(o, i, mirrored=True) for o, i in zip(out, images)]
  assert all((p is None) != (m is None) for p, m in zip(plain, mirror))
  assert 16 < sum(m is not None for m in mirror) < 48
  shifts = {o for o in plain + mirror if o is not None}
  assert len(shifts) > 10


def test_pad_for_eval_masks_the_padding():
  images, labels, mask = in_memory.pad_for_eval(np.ones((7, 2, 2, 1), np.uint8), np.arange(7), 4)
  assert images.shape[0] == 8 and mask.tolist() == [1] * 7 + [0]


@pytest.mark.slow  # TensorFlow, tfds and a VGG-Small step: about 19 s of CPU
def test_cifar10_through_tfds_mock_data_trains_a_step(tmp_path):
  """The real tfds `cifar10` code path (tfds.load, splits, decoding) drives a VGG-Small step."""
  tfds = pytest.importorskip("tensorflow_datasets", reason='needs pip install -e ".[tfds]"')

  from configs import vgg_small

  config = vgg_small.get_config()
  config.model.width = 1 / 16  # shrunk by overrides, as on the command line
  config.batch_size = 8
  config.eval_batch_size = 8
  config.max_steps = 2
  config.checkpoint_every_steps = 2
  with tfds.testing.mock_data(num_examples=16):
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["count"] == 16
  logged = run.MetricsLog(tmp_path / "run").read()
  assert [r["step"] for r in logged if "train/loss" in r] == [1, 2]
