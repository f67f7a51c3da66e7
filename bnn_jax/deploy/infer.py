"""Classifies images with an exported model: `python -m bnn_jax.deploy.infer FILE INPUT...`.

INPUT is an image file (PNG, JPEG, ...: converted to the model's channels, never resized) or an
.npz holding `images` uint8 [N, H, W(, C)] and optionally integer `labels` [N] (read and checked
by the training code's own reader, bnn_jax.data.sources.read_npz). Prints a summary: the
number of images, and with labels the accuracy and a per-class table (images, accuracy, the class
most often predicted instead), without labels the classes predicted most often; class names come
from the model file. --per_image adds one line per image. Uses only the inference engine: no
training code, no checkpoint.
"""

import collections
import os
import pathlib

import numpy as np
from absl import app, flags

from bnn_jax.data.sources import read_npz
from bnn_jax.deploy import inference
from bnn_jax.errors import InputError
from bnn_jax.logs import quiet_library_logs

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 64, "Images per engine call.")
flags.DEFINE_bool("per_image", False, "Also print one line per image: name, class, probability.")
flags.DEFINE_integer("top", 5, "Without labels: how many of the most predicted classes to list.")


def read_images(
  paths, image_shape, num_classes: int | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(names, uint8 images [N, H, W, C], labels [N], -1 where unknown) from image and .npz files.

  num_classes: the model's; labels at or above it are refused.
  """
  names, images, labels = [], [], []
  for path in map(pathlib.Path, paths):
    if path.suffix == ".npz":
      batch, batch_labels, _ = read_npz(path, labels_required=False)
      if batch_labels is not None and num_classes and len(batch_labels):
        if batch_labels.max() >= num_classes:
          raise InputError(
            f"{path}: label {batch_labels.max()} is not one of this model's {num_classes} "
            f"classes (labels 0..{num_classes - 1})"
          )
      names += [f"{path}[{i}]" for i in range(len(batch))]
      images += list(batch)
      labels += [-1] * len(batch) if batch_labels is None else batch_labels.tolist()
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


def class_label(k: int, class_names) -> str:
  """'3 Dress' where the model file names its classes, else '3'."""
  return f"{k} {class_names[k]}" if k < len(class_names) else str(k)


def report(probs: np.ndarray, labels: np.ndarray, class_names, top: int = 5) -> list[str]:
  """The summary lines of a classification: counts, accuracy, per-class table or top classes.

  probs: [N, classes]; labels: [N], -1 where unknown; class_names: from the model file.
  """
  predicted = probs.argmax(-1)
  labeled = labels >= 0
  lines = [f"{len(predicted)} images, {labeled.sum()} of them labeled"]
  if labeled.any():
    truth, guess = labels[labeled], predicted[labeled]
    lines.append(f"accuracy {np.mean(guess == truth):.4f} ({labeled.sum()} labeled images)")
    width = max(len("class"), *(len(class_label(k, class_names)) for k in np.unique(truth)))
    lines.append(
      f"{'class':<{width}}  {'images':>6}  {'accuracy':>8}  most often predicted instead"
    )
    for k in np.unique(truth):
      mine = guess[truth == k]
      wrong = collections.Counter(mine[mine != k].tolist()).most_common(1)
      instead = f"{class_label(wrong[0][0], class_names)} ({wrong[0][1]})" if wrong else "-"
      lines.append(
        f"{class_label(k, class_names):<{width}}  {len(mine):>6}  {np.mean(mine == k):>8.4f}  "
        f"{instead}"
      )
  unlabeled = predicted[~labeled]
  if len(unlabeled):
    counts = collections.Counter(unlabeled.tolist()).most_common(top)
    shares = ", ".join(
      f"{class_label(k, class_names)} {n} ({n / len(unlabeled):.1%})" for k, n in counts
    )
    lines.append(f"most predicted classes of the {len(unlabeled)} unlabeled images: {shares}")
  return lines


def main(argv):
  if len(argv) < 3:
    raise app.UsageError("usage: python -m bnn_jax.deploy.infer FILE IMAGE_OR_NPZ [...]")
  if FLAGS.batch_size < 1:
    raise InputError(f"--batch_size {FLAGS.batch_size} must be at least 1")
  if FLAGS.top < 1:
    raise InputError(f"--top {FLAGS.top} must be at least 1")
  quiet_library_logs()
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_prefer_vector_width" not in xla_flags:  # read when jax first computes: now
    os.environ["XLA_FLAGS"] = f"{xla_flags} {WIDE_VECTORS}".strip()
  program = inference.load(argv[1])
  names, images, labels = read_images(argv[2:], program.input_shape, program.num_classes)
  probs = classify(inference.Engine(program), images, FLAGS.batch_size)
  class_names = program.metadata.get("class_names") or []
  if FLAGS.per_image:
    for name, p in zip(names, probs):
      k = int(p.argmax())
      print(f"{name}: {class_label(k, class_names)} ({p[k]:.3f})")
  print("\n".join(report(probs, labels, class_names, FLAGS.top)))


if __name__ == "__main__":
  from bnn_jax import cli

  cli.run(main)
