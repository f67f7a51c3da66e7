"""Decodes a JPEG npz pair into the plain npz folder that `data.name = "npz"` reads.

python launch/decode_jpeg_npz.py IN_DIR OUT_DIR [--workers=N]

IN_DIR holds train.npz and test.npz, each with `jpeg` (the JPEG files concatenated, uint8),
`offsets` (int, N+1: image i is jpeg[offsets[i]:offsets[i+1]]) and `labels` (int, N).
OUT_DIR gets train.npz and test.npz with `images` uint8 [N, H, W, 3] (RGB) and `labels` int32
[N]. Needs numpy and Pillow. Each file is written through a temporary name: a folder holding
both files is whole.
"""

import argparse
import io
import pathlib
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

SPLITS = ("train", "test")


def decode(blobs: list[bytes]) -> np.ndarray:
  """JPEG files -> uint8 [N, H, W, 3]; all must have one size."""
  from PIL import Image

  images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    raise ValueError(f"the images differ in size: {sorted(shapes)[:3]}")
  return np.stack(images)


def read_jpeg_npz(path: pathlib.Path) -> tuple[list[bytes], np.ndarray]:
  """(JPEG files, labels) of one split; ValueError names what is wrong with the file."""
  with np.load(path) as z:
    missing = [k for k in ("jpeg", "offsets", "labels") if k not in z.files]
    if missing:
      raise ValueError(f"{path} lacks {', '.join(missing)} (it holds {', '.join(z.files)})")
    jpeg, offsets, labels = z["jpeg"], z["offsets"].astype(np.int64), z["labels"]
  if (
    len(offsets) != len(labels) + 1
    or offsets[0] != 0
    or offsets[-1] != len(jpeg)
    or np.any(np.diff(offsets) <= 0)
  ):
    raise ValueError(
      f"{path}: offsets must rise from 0 to len(jpeg) = {len(jpeg)} with one more entry than "
      f"labels ({len(labels)}); got {len(offsets)} entries from {offsets[0]} to {offsets[-1]}"
    )
  raw = jpeg.tobytes()
  return [raw[a:b] for a, b in zip(offsets[:-1], offsets[1:])], labels.astype(np.int32)


def decode_split(src: pathlib.Path, dst: pathlib.Path, workers: int) -> tuple[int, ...]:
  """Decodes src (a JPEG npz) into dst (images, labels); returns the images' shape."""
  blobs, labels = read_jpeg_npz(src)
  chunk = -(-len(blobs) // max(1, workers))
  parts = [blobs[i : i + chunk] for i in range(0, len(blobs), chunk)]
  if workers > 1 and len(parts) > 1:
    with ProcessPoolExecutor(workers) as pool:
      images = np.concatenate(list(pool.map(decode, parts)))
  else:
    images = decode(blobs)
  tmp = dst.with_name(dst.stem + ".tmp.npz")
  np.savez(tmp, images=images, labels=labels)
  tmp.replace(dst)
  return images.shape


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("src", type=pathlib.Path, help="folder of the JPEG train.npz and test.npz")
  parser.add_argument("dst", type=pathlib.Path, help="folder for the decoded npz files")
  parser.add_argument("--workers", type=int, default=8, help="decoding processes")
  args = parser.parse_args(argv)
  for split in SPLITS:
    if not (args.src / f"{split}.npz").is_file():
      print(f"error: {args.src} has no {split}.npz (a JPEG npz pair is needed)", file=sys.stderr)
      return 2
  args.dst.mkdir(parents=True, exist_ok=True)
  for split in SPLITS:
    try:
      shape = decode_split(args.src / f"{split}.npz", args.dst / f"{split}.npz", args.workers)
    except (ValueError, OSError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print(f"{split}: {shape[0]} images of {'x'.join(map(str, shape[1:]))} -> {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
