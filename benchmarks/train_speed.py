"""Train-step throughput (images/s) of a model, binary and full precision, on this machine.

  python benchmarks/train_speed.py --config=configs/vgg_small.py --batch_size=32 --steps=5

Times the jitted, donated train step of bnn_jax.train (forward, backward, optax chain) on random
data already on the device, after one warm-up step that compiles. The images have the shape and
class count of the config's dataset (32x32x3 and 10 classes where the config leaves it open, as
for npz or fake data; 224x224x3 and 1000 classes for ImageNet). Prints the machine, the
settings and the median over --repeats timings of --steps steps each. Both variants are measured
in the same process, one after the other, so their ratio is the figure to compare.
--epoch_images=N adds the time one epoch of N images would take at that rate (1281167: ImageNet's
training set), step time only: no input pipeline, evaluation or checkpoints.

  python benchmarks/train_speed.py --config=configs/resnet18_imagenet.py \
    --config.compute_dtype=bfloat16 --batch_size=256 --epoch_images=1281167
"""

import os
import statistics
import sys
import time

from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import machine  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/vgg_small.py", "Model config.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_integer("steps", 5, "Steps per timing.")
flags.DEFINE_integer("repeats", 3, "Timings; the median is reported.")
flags.DEFINE_list("variants", ["binary", "float"], "Which of binary, float to measure.")
flags.DEFINE_integer("epoch_images", 0, "Also print the time of an epoch of this many images.")


def data_shape(config) -> tuple[tuple[int, int, int], int]:
  """(image shape, classes) of the config's dataset; 32x32x3 and 10 where it leaves them open."""
  from bnn_jax.data import DATASETS, DatasetInfo

  info = DATASETS.get(config.data.name, DatasetInfo(None, None))
  return info.image_shape or (32, 32, 3), info.num_classes or 10


def prepare(config, variant: str, batch_size: int):
  """Compiles bnn_jax's train step for `variant` ("binary" or "float") and runs it once.

  Returns run(n) -> seconds: n more steps on the same random batch, waited for.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bnn_jax import optim, run, train
  from bnn_jax.data import DataSpec

  config = config.copy_and_resolve_references()
  config.model.binary = variant == "binary"
  image_shape, classes = data_shape(config)
  channels = image_shape[-1]
  spec = DataSpec(classes, image_shape, (0.5,) * channels, (0.25,) * channels)
  mesh = run.make_mesh()
  tx, schedule = optim.make(config, steps_per_epoch=1000)
  graphdef, state = run.init_state(config, spec, tx, mesh)
  step = jax.jit(train.make_update(graphdef, tx, schedule, config, spec), donate_argnums=0)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batch_size, *image_shape), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, classes, batch_size).astype(np.int32))
  state, metrics = step(state, images, labels)  # compile
  jax.block_until_ready(metrics)
  holder = [state]  # the step donates its state: keep only the newest

  def timed(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      holder[0], metrics = step(holder[0], images, labels)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  return timed


def measure(config, variant: str) -> float:
  timed = prepare(config, variant, FLAGS.batch_size)
  rates = [FLAGS.steps * FLAGS.batch_size / timed(FLAGS.steps) for _ in range(FLAGS.repeats)]
  return statistics.median(rates)


def main(argv):
  del argv
  config = FLAGS.config
  print(f"machine: {machine.describe()}")
  image_shape, classes = data_shape(config)
  print(
    f"model {config.model.name} width {config.model.width}, batch {FLAGS.batch_size}, "
    f"images {'x'.join(map(str, image_shape))} of {classes} classes, "
    f"{FLAGS.steps} steps x {FLAGS.repeats} timings, compute {config.compute_dtype}"
  )
  rates = {}
  for variant in FLAGS.variants:
    rates[variant] = measure(config, variant)
    epoch = ""
    if FLAGS.epoch_images:
      minutes = FLAGS.epoch_images / rates[variant] / 60
      epoch = f"; an epoch of {FLAGS.epoch_images} images: {minutes:.1f} min of steps"
    print(f"{variant:>6}: {rates[variant]:8.1f} images/s (median){epoch}", flush=True)
  if len(rates) == 2:
    print(f"binary / float: {rates['binary'] / rates['float']:.2f}")


if __name__ == "__main__":
  from bnn_jax import cli  # absl's app.run, but --help exits 0 and bad flags with one sentence

  cli.run(main)
