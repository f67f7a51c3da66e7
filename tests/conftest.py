"""Shared test helpers: configs and paths."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `from configs import ...` as in `python -m bnn_jax.main`
  sys.path.insert(0, str(ROOT))

FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def test_config():
  from configs import test

  return test.get_config()


def require_fashion_mnist():
  """Skips the calling test, saying why, when the Fashion-MNIST files are absent."""
  if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
    pytest.skip(
      f"Fashion-MNIST not found in {FASHION_MNIST}: apt-get install dataset-fashion-mnist"
    )
