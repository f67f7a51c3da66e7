"""ImageNet input: decoding, process shards, eval coverage, one step of each config on mock tfds."""

import importlib
import pathlib

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bnn_jax import config_checks, run, train
from bnn_jax.data import host_batches, imagenet
from bnn_jax.errors import InputError

TFDS_EXTRA = 'the ImageNet pipeline needs the tfds extra: pip install -e ".[tfds]"'
pytest.importorskip("tensorflow", reason=TFDS_EXTRA)

# A step through tfds takes 10 to 15 s of CPU time for AlexNet, about 30 s for ResNet-18, even
# shrunk (compilation, the mock dataset): marked slow. The fast subset tests the pipeline on
# synthetic JPEGs.
IMAGENET_CONFIGS = [
  pytest.param("alexnet_imagenet", marks=pytest.mark.slow),
  pytest.param("alexnet_imagenet_fp", marks=pytest.mark.slow),
  pytest.param("resnet18_imagenet", marks=pytest.mark.slow),
  pytest.param("resnet18_imagenet_fp", marks=pytest.mark.slow),
]


def _tf():
  return imagenet._tf()


def shrink(config, image_size=32):
  """The overrides that make an ImageNet config tiny (as on the command line)."""
  config.model.width = 1 / 16
  config.data.image_size = image_size
  config.data.eval_resize = image_size + image_size // 8
  config.data.synthetic_image_shape = (40, 48)
  config.data.synthetic_num_images = 16
  config.data.synthetic_num_classes = 10
  config.data.synthetic_train_size = 64
  config.data.synthetic_eval_size = 20
  config.data.shuffle_buffer = 16
  config.batch_size = 4
  config.eval_batch_size = 4
  config.num_epochs = 2.0
  config.optimizer.warmup_epochs = 0.0
  config.log_every_steps = 1
  return config


def get_config(name):
  return importlib.import_module(f"configs.{name}").get_config()


def _jpeg(image: np.ndarray) -> bytes:
  return _tf().io.encode_jpeg(image, quality=100).numpy()


def test_eval_shares_cover_every_example_exactly_once():
  for n in (0, 1, 7, 50_000):
    for processes in (1, 2, 3, 8):
      shares = imagenet.eval_shares(n, processes)
      covered = np.concatenate([np.arange(a, b) for a, b in shares])
      np.testing.assert_array_equal(covered, np.arange(n))


def test_eval_crop_is_the_center_of_the_image_resized_to_the_shorter_side():
  # A 40x80 gradient: red encodes the column, green the row.
  rows, cols = np.meshgrid(np.arange(40), np.arange(80), indexing="ij")
  image = np.stack([cols * 255 / 79, rows * 255 / 39, np.zeros_like(rows)], -1)
  out = imagenet.decode_eval(_jpeg(image.astype(np.uint8)), 32, 36).numpy()
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  # Resized to 36x72 (scale 0.9), crop rows 2..33 and columns 20..51.
  to_source = lambda i: (i + 0.5) / 0.9 - 0.5
  np.testing.assert_allclose(out[16, [0, 31], 0], to_source(np.array([20, 51])) * 255 / 79, atol=6)
  np.testing.assert_allclose(out[[0, 31], 16, 1], to_source(np.array([2, 33])) * 255 / 39, atol=6)


def test_train_crops_are_random_per_seed_and_reproducible():
  tf = _tf()
  rng = np.random.default_rng(0)
  jpeg = _jpeg(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
  crop = lambda s: imagenet.decode_train(jpeg, tf.constant([7, s], tf.int64), 32).numpy()
  first = crop(1)
  assert first.shape == (32, 32, 3) and first.dtype == np.uint8
  np.testing.assert_array_equal(first, crop(1))
  assert not all(np.array_equal(first, crop(s)) for s in range(2, 6))


def _source():
  config = shrink(get_config("resnet18_imagenet"))
  config.data.name = "imagenet_synthetic"
  return imagenet.load(config.data)


def _local_batches(source, first_step, rows, steps, global_batch=8):
  ds = source.train_dataset(first_step, rows, global_batch, seed=3)
  return [b for _, b in zip(range(steps), ds.as_numpy_iterator())]


def test_synthetic_global_batches_do_not_depend_on_the_number_of_processes():
  source = _source()
  whole = _local_batches(source, 0, (0, 8), 3)
  halves = zip(_local_batches(source, 0, (0, 4), 3), _local_batches(source, 0, (4, 8), 3))
  for full, (a, b) in zip(whole, halves):
    for key in ("images", "labels"):
      np.testing.assert_array_equal(full[key], np.concatenate([a[key], b[key]]))
  resumed = _local_batches(source, 2, (0, 8), 1)[0]  # a run resumed at step 2
  np.testing.assert_array_equal(resumed["images"], whole[2]["images"])
  assert whole[0]["images"].shape == (8, 32, 32, 3) and whole[0]["labels"].dtype == np.int32


def test_synthetic_labels_are_learnable_from_the_colour():
  source = _source()
  batch = _local_batches(source, 0, (0, 8), 4)
  images = np.concatenate([b["images"] for b in batch]).astype(np.float32)
  labels = np.concatenate([b["labels"] for b in batch])
  means = images.mean(axis=(1, 2))
  for label in np.unique(labels):
    same = means[labels == label]
    assert np.all(np.abs(same - same.mean(0)) < 25)


@pytest.mark.parametrize("processes, local_batch", [(1, 4), (2, 4), (3, 2)])
def test_eval_batches_see_every_example_once_across_processes(processes, local_batch):
  source = _source()  # 20 validation examples
  seen, counts = [], set()
  for p in range(processes):
    ds, num_batches = source.eval_dataset(local_batch, processes, p)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == num_batches
    counts.add(num_batches)
    for b in batches:
      assert b["images"].shape == (local_batch, 32, 32, 3)
      seen.append(b["mask"])
  assert len(counts) == 1  # every process runs the same number of eval steps
  assert np.concatenate(seen).sum() == 20


def test_global_batches_assemble_the_local_rows():
  mesh = run.make_mesh()
  sharding = NamedSharding(mesh, P("data"))
  rows = host_batches.process_rows(sharding, 8)
  assert rows == (0, 8)  # a single process holds every row
  source = _source()
  batch = next(imagenet.train_batches(source, sharding, 8, first_step=0, seed=3))
  assert isinstance(batch["images"], jax.Array) and batch["images"].shape == (8, 32, 32, 3)
  assert batch["images"].sharding == sharding
  np.testing.assert_array_equal(
    np.asarray(batch["labels"]), _local_batches(source, 0, (0, 8), 1)[0]["labels"]
  )


def test_host_fed_configs_are_checked():
  config = shrink(get_config("resnet18_imagenet"))
  config.data.eval_resize = 16
  with pytest.raises(InputError, match="eval_resize = 16 must be at least"):
    config_checks.check_config(config, 1)
  from configs import test

  small = test.get_config()
  small.data.name = "imagenet_synthetic"
  with pytest.raises(InputError, match="needs config.data.image_size"):
    config_checks.check_config(small, 1)


def test_unprepared_imagenet_fails_with_one_clear_sentence(tmp_path):
  config = get_config("resnet18_imagenet")
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  config.data.manual_dir = str(tmp_path / "empty")
  with pytest.raises(InputError, match="could not prepare imagenet2012.*manual_dir"):
    imagenet.load(config.data)


@pytest.mark.parametrize("name", IMAGENET_CONFIGS)
def test_one_step_of_each_imagenet_config_through_mock_tfds(tmp_path, name):
  """The real tfds imagenet2012 code path (builder, splits, JPEG bytes) drives a step."""
  tfds = pytest.importorskip("tensorflow_datasets")

  config = shrink(get_config(name), image_size=64 if name.startswith("alexnet") else 32)
  assert config.data.name == "imagenet2012"
  config.max_steps = 1
  with tfds.testing.mock_data(num_examples=6):
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["count"] == 6  # 6 validation images in 2 batches of 4: padding masked
  logged = run.MetricsLog(pathlib.Path(tmp_path / "run")).read()
  losses = [r["train/loss"] for r in logged if "train/loss" in r]
  assert len(losses) == 1 and np.isfinite(losses[0])
  assert (tmp_path / "run" / "checkpoints" / "1").is_dir()
