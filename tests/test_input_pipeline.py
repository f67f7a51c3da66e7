"""Data sources, bad files, on-device batching and augmentation, the tfds CIFAR-10 path."""

import gzip
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import run, train
from bnn_jax.data import in_memory
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
    files[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, (n,), dtype=np.uint8)
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
  ds = in_memory.load_idx_folder(str(tmp_path))
  np.testing.assert_array_equal(ds.train_images[..., 0], files["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(ds.test_labels, files["t10k-labels-idx1-ubyte"])
  assert ds.image_shape == (28, 28, 1)


def test_truncated_idx_file_names_the_file(tmp_path):
  _write_mnist_folder(tmp_path, compress=False)
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(InputError, match="train-images-idx3-ubyte is truncated or corrupt"):
    in_memory.load_idx_folder(str(tmp_path))


def test_corrupt_gzip_and_bad_magic_are_reported(tmp_path):
  _write_mnist_folder(tmp_path)
  gz = tmp_path / "t10k-labels-idx1-ubyte.gz"
  gz.write_bytes(gz.read_bytes()[:20])
  with pytest.raises(InputError, match="t10k-labels-idx1-ubyte.gz is truncated or corrupt"):
    in_memory.load_idx_folder(str(tmp_path))
  gz.write_bytes(gzip.compress(b"PK\x03\x04 not an idx file"))
  with pytest.raises(InputError, match="is not an IDX file"):
    in_memory.load_idx_folder(str(tmp_path))


def test_missing_folder_and_missing_file(tmp_path):
  with pytest.raises(InputError, match="is not a folder; give the folder of the IDX files"):
    in_memory.load_idx_folder(str(tmp_path / "nowhere"))
  with pytest.raises(InputError, match="has no train-images-idx3-ubyte"):
    in_memory.load_idx_folder(str(tmp_path))


def test_npz_folder_and_its_errors(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (("train", 10), ("test", 4)):
    np.savez(
      tmp_path / f"{split}.npz",
      images=rng.integers(0, 256, (n, 32, 32, 3), np.uint8),
      labels=rng.integers(0, 10, n),
    )
  ds = in_memory.load_npz_folder(str(tmp_path))
  assert ds.image_shape == (32, 32, 3) and len(ds.train_labels) == 10
  (tmp_path / "test.npz").write_bytes((tmp_path / "test.npz").read_bytes()[:50])
  with pytest.raises(InputError, match="test.npz is truncated or corrupt"):
    in_memory.load_npz_folder(str(tmp_path))
  np.savez(tmp_path / "test.npz", pixels=np.zeros((2, 4, 4), np.uint8))
  with pytest.raises(InputError, match="must hold arrays 'images' and 'labels'"):
    in_memory.load_npz_folder(str(tmp_path))


def test_fake_data_is_deterministic_and_subset_applies(test_config):
  a = in_memory.load(test_config.data)
  b = in_memory.load(test_config.data)
  np.testing.assert_array_equal(a.train_images, b.train_images)
  assert a.image_shape == (8, 8, 3) and a.num_classes == 4
  test_config.data.train_subset = 10
  assert len(in_memory.load(test_config.data).train_labels) == 10


def test_unknown_dataset_name(test_config):
  test_config.data.name = "imagenet9000"
  with pytest.raises(InputError, match="unknown data.name 'imagenet9000'; allowed: cifar10"):
    in_memory.load(test_config.data)


def test_train_batches_cover_each_epoch_once_and_reshuffle():
  key = jax.random.key(0)
  epoch0 = np.concatenate([in_memory.train_batch_indices(s, 20, 4, key) for s in range(5)])
  epoch1 = np.concatenate([in_memory.train_batch_indices(s, 20, 4, key) for s in range(5, 10)])
  assert sorted(epoch0) == list(range(20)) and sorted(epoch1) == list(range(20))
  assert list(epoch0) != list(epoch1)


def test_augment_crops_are_shifted_windows_and_flips_mirror():
  images = jnp.arange(2 * 6 * 6 * 1, dtype=jnp.uint8).reshape(2, 6, 6, 1)
  out = np.asarray(in_memory.augment(images, jax.random.key(3), "crop_flip", padding=2))
  assert out.shape == images.shape
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for i in range(2):
    windows = [padded[i, a : a + 6, b : b + 6] for a in range(5) for b in range(5)]
    windows += [w[:, ::-1] for w in windows]
    assert any(np.array_equal(out[i], w) for w in windows)
  flipped = np.asarray(in_memory.augment(images, jax.random.key(0), "flip"))
  for i in range(2):
    assert np.array_equal(flipped[i], images[i]) or np.array_equal(flipped[i], images[i, :, ::-1])


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
