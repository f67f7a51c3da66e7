"""Learning on real data: the binary net of configs/fashion_mnist.py on real Fashion-MNIST images.

The images are the Fashion-MNIST subset bundled with bnn_jax (data.name "fashion_mnist_small":
10,000 class-balanced training images, 2,000 test images from the official test set), so this
test runs everywhere, without the Debian package.
"""

import pathlib

import pytest

from bnn_jax import data, run

# The run of the fashion_mnist_small_run fixture (conftest.py): 1 epoch over the 10,000 bundled
# training images (78 steps of 128), evaluated on the 2,000 bundled test images.
# Measured: test accuracy 0.7495 (seed 0), 0.7375 (seed 1), 0.7265 (seed 2), 2026-11-26, jax
# 0.10.2, 2-core x86-64 CPU (58 s of CPU each, compilation included; 3.5 min of wall time at load
# 10). Chance is 0.10. The floor leaves about 8 points below the lowest seed for library versions
# and CPU kernels: binary nets amplify round-off into different bit flips.
ACCURACY_FLOOR = 0.65


@pytest.mark.slow
def test_binary_fashion_mnist_learns(fashion_mnist_small_run):
  config, workdir, result = fashion_mnist_small_run
  assert config.model.binary and config.data.name == "fashion_mnist_small"
  assert result["count"] == 2_000
  print(f"binary Fashion-MNIST subset, 1 epoch: {result['accuracy']:.4f}")
  assert result["accuracy"] >= ACCURACY_FLOOR
  # The binary layers really are binary and their scales were logged.
  logged = run.MetricsLog(workdir).read()
  assert [r["step"] for r in logged if "train/loss" in r][-1] == 78
  assert any("train_mean/alpha/conv1" in r for r in logged)
  assert any("train_mean/beta/act1" in r for r in logged)


SOURCE = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
  not (SOURCE / "train-images-idx3-ubyte.gz").exists(), reason="no Debian dataset-fashion-mnist"
)
def test_the_bundled_subset_is_what_its_script_builds_byte_for_byte(tmp_path):
  # launch/make_fashion_mnist_small.py says the same source files give identical files.
  from launch import make_fashion_mnist_small

  assert make_fashion_mnist_small.main(["--output", str(tmp_path)]) == 0
  shipped = pathlib.Path(data.__file__).parent / "fashion_mnist_small"
  for name in ("train.npz", "test.npz"):
    assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
