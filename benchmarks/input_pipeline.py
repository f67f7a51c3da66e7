"""Images/s of the ImageNet training input pipeline (JPEG decoding and augmentation) on this host.

  python benchmarks/input_pipeline.py [--seconds=20] [--batch_size=256] [--threads=0]

Feeds synthetic JPEGs of ImageNet's typical size (500x375, about the file size of ImageNet's
JPEGs; data.name "imagenet_synthetic") through the real training pipeline of
bnn_jax/imagenet_input.py: random-resized crop to 224, flip, batching on tf.data threads, then
assembly into global jax.Arrays. Prints the machine, the settings, and images/s of (a) tf.data
alone and (b) the whole path to global arrays, each after a warm-up, so that one can tell how
many accelerators one host's cores can feed (a GPU trains ResNet-18 at a few thousand images/s).
"""

import os
import sys
import time

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import machine  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_float("seconds", 20.0, "Time per measurement, after the warm-up.")
flags.DEFINE_integer("warmup_batches", 3, "Batches before timing starts.")
flags.DEFINE_integer("batch_size", 256, "Images per batch (this host's share).")
flags.DEFINE_integer("threads", 0, "tf.data threads (data.num_threads); 0 = one per core.")
flags.DEFINE_integer("image_size", 224, "Training crop, pixels.")
flags.DEFINE_integer("num_jpegs", 64, "Distinct synthetic JPEGs (repeated).")


def rate(iterator, batch_size: int) -> float:
  for _ in range(FLAGS.warmup_batches):
    next(iterator)
  start, images = time.perf_counter(), 0
  while time.perf_counter() - start < FLAGS.seconds:
    batch = next(iterator)
    images += batch_size
  del batch
  return images / (time.perf_counter() - start)


def main(argv):
  del argv
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from bnn_jax import run
  from bnn_jax.data import imagenet
  from configs import imagenet_base

  config = imagenet_base.get_config()
  data = config.data
  data.name = "imagenet_synthetic"
  data.image_size = FLAGS.image_size
  data.num_threads = FLAGS.threads
  data.synthetic_num_images = FLAGS.num_jpegs
  source = imagenet.load(data)
  jpegs, _ = imagenet.synthetic_jpegs(4, tuple(data.synthetic_image_shape), 4)
  mean_kib = np.mean([len(j) for j in jpegs]) / 1024
  batch = FLAGS.batch_size
  print(f"machine: {machine.describe()}")
  print(
    f"settings: {data.synthetic_image_shape[1]}x{data.synthetic_image_shape[0]} JPEGs "
    f"(mean {mean_kib:.0f} KiB) -> random-resized crop {data.image_size}, flip; batch {batch}; "
    f"tf.data threads {FLAGS.threads or 'one per core'}; {FLAGS.seconds:.0f} s per figure"
  )
  ds = source.train_dataset(0, (0, batch), batch, seed=0)
  tf_rate = rate(ds.as_numpy_iterator(), batch)
  print(f"(a) tf.data decode + augment + batch: {tf_rate:8.1f} images/s")
  mesh = run.make_mesh()
  batches = imagenet.train_batches(source, NamedSharding(mesh, P("data")), batch, 0, 0)
  full_rate = rate(batches, batch)
  print(f"(b) ... + global jax.Arrays:          {full_rate:8.1f} images/s")


if __name__ == "__main__":
  from bnn_jax import cli  # absl's app.run, but --help exits 0 and bad flags with one sentence

  cli.run(main)
