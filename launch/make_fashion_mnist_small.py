"""Builds bnn_jax/data/fashion_mnist_small: a class-balanced Fashion-MNIST subset to ship.

python launch/make_fashion_mnist_small.py [--source=/usr/share/datasets/fashion-mnist]
  [--output=bnn_jax/data/fashion_mnist_small] [--train_per_class=1000] [--test_per_class=200]

Reads the four IDX files of the full Fashion-MNIST (Debian package dataset-fashion-mnist) and
keeps, for every class, the first `train_per_class` images of the official training set and the
first `test_per_class` images of the official test set, in file order (both files come shuffled,
so the first images of a class are an unbiased sample of it). Test images come from the test set
only. Each split is written with np.savez_compressed as `train.npz` / `test.npz`:

  images          uint8 [N, 28, 28, 1]
  labels          int32 [N], 0-9
  class_names     str [10], the names of labels 0-9
  source_indices  int64 [N], the index of each image in its official IDX file (ascending)

Deterministic: the same source files give byte-identical arrays (the .npz zip entries carry a
fixed timestamp, so the files themselves are identical too).
"""

import argparse
import gzip
import hashlib
import pathlib
import struct
import sys
import zipfile

import numpy as np

from bnn_jax.data import DATASETS  # noqa: E402

CLASS_NAMES = DATASETS["fashion_mnist"].class_names
FILES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: pathlib.Path) -> np.ndarray:
  """An IDX file (gzip or plain) -> uint8 array of the shape its header gives."""
  raw = path.read_bytes()
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
  if zero != 0 or dtype_code != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file (header {raw[:4].hex()})")
  shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def first_per_class(labels: np.ndarray, per_class: int, num_classes: int) -> np.ndarray:
  """Ascending indices of the first `per_class` examples of every class, in file order."""
  picked = []
  for c in range(num_classes):
    where = np.flatnonzero(labels == c)
    if len(where) < per_class:
      raise ValueError(f"class {c} has {len(where)} examples, fewer than {per_class}")
    picked.append(where[:per_class])
  return np.sort(np.concatenate(picked))


def save_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """np.savez_compressed, but with a fixed zip timestamp so that reruns give identical bytes."""
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
    for name, value in arrays.items():
      info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      with zf.open(info, "w") as f:
        np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def build(source: pathlib.Path, output: pathlib.Path, per_class: dict[str, int]) -> None:
  output.mkdir(parents=True, exist_ok=True)
  for split, (image_file, label_file) in FILES.items():
    images = read_idx(source / image_file)
    labels = read_idx(source / label_file)
    idx = first_per_class(labels, per_class[split], len(CLASS_NAMES))
    arrays = {
      "images": images[idx][..., None],
      "labels": labels[idx].astype(np.int32),
      "class_names": np.array(CLASS_NAMES),
      "source_indices": idx.astype(np.int64),
    }
    path = output / f"{split}.npz"
    save_npz(path, arrays)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    counts = np.bincount(arrays["labels"], minlength=len(CLASS_NAMES))
    print(
      f"{path}: {len(idx)} images {arrays['images'].shape}, per class {counts.tolist()}, "
      f"source indices {idx[0]}..{idx[-1]}, {path.stat().st_size:,} bytes, sha256 {digest}"
    )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
  parser.add_argument("--output", default="bnn_jax/data/fashion_mnist_small")
  parser.add_argument("--train_per_class", type=int, default=1000)
  parser.add_argument("--test_per_class", type=int, default=200)
  args = parser.parse_args(argv)
  source = pathlib.Path(args.source)
  missing = [f for pair in FILES.values() for f in pair if not (source / f).exists()]
  if missing:
    print(
      f"--source {str(source)!r} lacks {', '.join(missing)}; install the Debian package "
      "dataset-fashion-mnist or point --source at the folder of the Fashion-MNIST IDX files",
      file=sys.stderr,
    )
    return 1
  per_class = {"train": args.train_per_class, "test": args.test_per_class}
  build(source, pathlib.Path(args.output), per_class)
  return 0


if __name__ == "__main__":
  sys.exit(main())
