"""Classifies images with an exported model: `python -m bnn_jax.deploy.infer FILE INPUT...`.

INPUT is an image file (PNG, JPEG, ...: converted to the model's channels, never resized) or an
.npz holding `images` uint8 [N, H, W(, C)] and optionally `labels` [N] (then the accuracy on the
labeled images is printed too). Uses only the inference engine: no training code, no checkpoint.
"""

import os
import pathlib
import sys
import zipfile

import numpy as np
from absl import app, flags

from bnn_jax.deploy import inference
from bnn_jax.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 64, "Images per engine call.")


def read_images(paths, image_shape) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(names, uint8 images [N, H, W, C], labels [N], -1 where unknown) from image and .npz files."""
  names, images, labels = [], [], []
  for path in map(pathlib.Path, paths):
    if path.suffix == ".npz":
      try:
        with np.load(path) as z:
          if "images" not in z:
            raise InputError(f"{path} must hold an array 'images'; it holds {z.files}")
          batch = z["images"]
          batch_labels = z["labels"] if "labels" in z else None
      except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, InputError):
          raise
        raise InputError(f"cannot read {path} as .npz ({e})") from e
      if batch.dtype != np.uint8 or batch.ndim not in (3, 4):
        raise InputError(
          f"{path}: 'images' must be uint8 [N, H, W(, C)], got {batch.dtype} {batch.shape}"
        )
      batch = batch[..., None] if batch.ndim == 3 else batch
      names += [f"{path}[{i}]" for i in range(len(batch))]
      images += list(batch)
      if batch_labels is None:
        labels += [-1] * len(batch)
      elif np.shape(batch_labels) != (len(batch),):
        raise InputError(
          f"{path}: 'labels' must have shape ({len(batch)},), got {np.shape(batch_labels)}"
        )
      else:
        labels += [int(v) for v in batch_labels]
    else:
      names.append(str(path))
      images.append(_read_image_file(path, image_shape))
      labels.append(-1)
  for name, image in zip(names, images):
    if image.shape != tuple(image_shape):
      raise InputError(
        f"{name} has shape {image.shape}; this model takes {tuple(image_shape)} (resize it first)"
      )
  stacked = np.stack(images) if images else np.zeros((0, *image_shape), np.uint8)
  return names, stacked, np.asarray(labels, np.int64)


def _read_image_file(path: pathlib.Path, image_shape) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError

  try:
    with Image.open(path) as image:
      image = image.convert("L" if image_shape[-1] == 1 else "RGB")
      array = np.asarray(image, np.uint8)
  except (OSError, UnidentifiedImageError) as e:
    raise InputError(f"cannot read image {path} ({e})") from e
  return array[..., None] if array.ndim == 2 else array


def classify(engine: inference.Engine, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Softmax probabilities [N, classes] of uint8 images, `batch_size` at a time."""
  out = []
  for start in range(0, len(images), batch_size):
    logits = np.asarray(engine.logits(images[start : start + batch_size]), np.float64)
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    out.append(p / p.sum(-1, keepdims=True))
  return np.concatenate(out) if out else np.zeros((0, engine.program.num_classes))


# XLA:CPU vectorizes the popcount loops 256 bits wide by default; on AVX-512 CPUs 512 bits run
# the binary layers about 1.5 times faster (benchmarks/inference_speed.py). Harmless elsewhere.
WIDE_VECTORS = "--xla_cpu_prefer_vector_width=512"


def main(argv):
  if len(argv) < 3:
    raise app.UsageError("usage: python -m bnn_jax.deploy.infer FILE IMAGE_OR_NPZ [...]")
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_prefer_vector_width" not in xla_flags:  # read when jax first computes: now
    os.environ["XLA_FLAGS"] = f"{xla_flags} {WIDE_VECTORS}".strip()
  try:
    program = inference.load(argv[1])
    names, images, labels = read_images(argv[2:], program.input_shape)
    if FLAGS.batch_size < 1:
      raise InputError(f"--batch_size {FLAGS.batch_size} must be at least 1")
    probs = classify(inference.Engine(program), images, FLAGS.batch_size)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  class_names = program.metadata.get("class_names") or []
  top = probs.argmax(-1)
  for name, k, p in zip(names, top, probs):
    label = f" {class_names[k]}" if k < len(class_names) else ""
    print(f"{name}: {k}{label} ({p[k]:.3f})")
  labeled = labels >= 0
  if labeled.any():
    accuracy = np.mean(top[labeled] == labels[labeled])
    print(f"accuracy {accuracy:.4f} ({labeled.sum()} labeled images)")


if __name__ == "__main__":
  app.run(main)
