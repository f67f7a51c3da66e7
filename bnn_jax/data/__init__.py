"""Datasets: one registry of their facts, and one feed interface for the training loop.

Two kinds of feed implement `Feed`:
  in_memory  small sets (CIFAR-10, Fashion-MNIST, MNIST, .npz folders, the bundled set, fake
             data) held on the devices whole; batches chosen and augmented inside the jitted step
  imagenet   ImageNet-scale sets decoded on the hosts' CPU threads and fed as global batches

Both hand the step uint8 images; the model normalizes them (`normalize`, the only place).
"""

import dataclasses
from collections.abc import Callable
from typing import Protocol

import jax
import jax.numpy as jnp

from bnn_jax import interrupts


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What is known of a dataset before reading it: for summaries, exports and configs."""

  image_shape: tuple[int, int, int] | None  # None: set by the config (fake data, npz folders)
  num_classes: int | None
  class_names: tuple[str, ...] = ()
  host_fed: bool = False


_FASHION = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)
_CIFAR10 = (
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
)

# The registry: every data.name the configs may use.
DATASETS = {
  "cifar10": DatasetInfo((32, 32, 3), 10, _CIFAR10),
  "fashion_mnist": DatasetInfo((28, 28, 1), 10, _FASHION),
  "fashion_mnist_small": DatasetInfo((28, 28, 1), 10, _FASHION),
  "mnist": DatasetInfo((28, 28, 1), 10, tuple(str(d) for d in range(10))),
  "npz": DatasetInfo(None, None),
  "fake": DatasetInfo(None, None),
  "imagenet2012": DatasetInfo((224, 224, 3), 1000, host_fed=True),
  "imagenet_synthetic": DatasetInfo((224, 224, 3), 1000, host_fed=True),
}


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a model needs to know of its data; saved with the run for export and inference."""

  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  class_names: tuple[str, ...] = ()


def normalize(images: jax.Array, spec: DataSpec) -> jax.Array:
  """uint8 [..., C] -> float32, per-channel standardized with the dataset's mean and std."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(spec.mean, jnp.float32)) / jnp.asarray(spec.std, jnp.float32)


# update(state, images uint8 [B,H,W,C], labels int32 [B]) -> (state, metrics)
Update = Callable
# eval_sums(state, images uint8, labels, mask) -> {"correct", "loss", "count"} sums
EvalSums = Callable


class Feed(Protocol):
  """A dataset as the training loop sees it."""

  spec: DataSpec
  num_train: int

  def train_step(self, update: Update, first_step: int, teacher=None) -> Callable:
    """step(state) -> (state, metrics): one jitted train step on the batch of state["step"].

    `teacher` (distillation: a frozen model's state, or None) is passed to every update.
    """

  def evaluator(self, eval_sums: EvalSums) -> Callable:
    """evaluate(state) -> {"accuracy", "loss", "count"}, every test example counted once."""


def summarize(batch_sums) -> dict[str, float]:
  """Adds up per-batch {"correct", "loss", "count"} sums; accuracy and mean loss.

  A stop requested by a signal abandons it between batches (interrupts.EvaluationAbandoned).
  """
  sums = None
  for out in batch_sums:
    interrupts.check_evaluation()
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  return {
    "accuracy": float(sums["correct"] / sums["count"]),
    "loss": float(sums["loss"] / sums["count"]),
    "count": int(sums["count"]),
  }


def open_feed(config, mesh) -> Feed:
  """The feed of config.data over `mesh`; bad names, folders and files raise InputError."""
  from bnn_jax.data import imagenet, in_memory

  if DATASETS.get(config.data.name, DatasetInfo(None, None)).host_fed:
    return imagenet.HostFedFeed(config, mesh)
  return in_memory.InMemoryFeed(config, mesh)
