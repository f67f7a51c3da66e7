"""ImageNet-scale input: JPEGs decoded and augmented on host CPU threads, fed as global batches.

Sources (config.data.name):
  imagenet2012        tensorflow-datasets `imagenet2012`. tfds cannot download ImageNet: put
                      ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a folder and prepare
                      it once, `tfds build imagenet2012 --manual_dir=FOLDER --data_dir=DATA`
                      (or run one process with data.manual_dir=FOLDER); then every host reads
                      DATA (data.tfds_data_dir, on a shared filesystem).
  imagenet_synthetic  random JPEGs whose colour depends on the label, decoded and augmented
                      exactly like ImageNet; no files. For tests and for measuring the pipeline's
                      own images/s (benchmarks/input_pipeline.py).

Unlike input_pipeline (small datasets held on the device), ImageNet does not fit in device
memory: tf.data decodes and augments on the host's CPU threads (TensorFlow hidden from GPUs),
each process reads its own shard of the split, and each process's local batches are assembled
into one global batch with `jax.make_array_from_process_local_data`, a few batches ahead.

Training: Inception-style random-resized crop (8-100 % of the area, aspect 3/4-4/3) to
data.image_size and a horizontal flip, with per-example stateless seeds. Evaluation: the shorter
side resized to data.eval_resize, a central data.image_size crop; every validation image exactly
once across all processes (each process pads its share to the same number of batches and masks
the padding). Images leave the host as uint8; train.py normalizes them on the device.

Resuming: the synthetic source is a pure function of the step (a resumed run sees the batches
an uninterrupted run would have seen, whatever the number of processes); imagenet2012 reshuffles
with a seed that includes the resume step (same data distribution, not the same order).
"""

import dataclasses
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from bnn_jax.data import DataSpec, summarize
from bnn_jax.data.host_batches import global_batches, process_rows
from bnn_jax.errors import InputError

# Per-channel statistics of ImageNet's training set, RGB in [0, 1].
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
TRAIN_SPLIT, EVAL_SPLIT = "train", "validation"


def _tf():
  """TensorFlow, imported on first use and kept off the GPUs (JAX owns them)."""
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")
  return tf


# ----------------------------------------------------------------------------- decoding (tf)


def decode_train(jpeg, seed, image_size: int):
  """JPEG bytes -> uint8 [image_size, image_size, 3]: random-resized crop and flip.

  `seed` is an int64 [2] tensor; the same seed gives the same crop and flip (stateless ops).
  """
  tf = _tf()
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = tf.io.extract_jpeg_shape(jpeg)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    shape,
    bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
    seed=crop_seed,
    min_object_covered=0.1,
    aspect_ratio_range=(3 / 4, 4 / 3),
    area_range=(0.08, 1.0),
    max_attempts=10,
    use_image_if_no_bounding_boxes=True,
  )
  offset_y, offset_x, _ = tf.unstack(begin)
  height, width, _ = tf.unstack(size)
  window = tf.stack([offset_y, offset_x, height, width])
  image = tf.io.decode_and_crop_jpeg(jpeg, window, channels=3)
  image = tf.image.resize(image, (image_size, image_size), tf.image.ResizeMethod.BILINEAR)
  image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def decode_eval(jpeg, image_size: int, resize: int):
  """JPEG bytes -> uint8 [image_size, image_size, 3]: shorter side to `resize`, center crop."""
  tf = _tf()
  image = tf.io.decode_jpeg(jpeg, channels=3)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = resize / tf.reduce_min(shape)
  new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), image_size)
  image = tf.image.resize(image, new_shape, tf.image.ResizeMethod.BILINEAR)
  top = (new_shape[0] - image_size) // 2
  left = (new_shape[1] - image_size) // 2
  image = image[top : top + image_size, left : left + image_size]
  image = tf.ensure_shape(image, (image_size, image_size, 3))
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _options(num_threads: int):
  tf = _tf()
  options = tf.data.Options()
  options.deterministic = True
  if num_threads:
    options.threading.private_threadpool_size = num_threads
  return options


def eval_shares(num_examples: int, num_processes: int) -> list[tuple[int, int]]:
  """[start, stop) of the validation examples each process evaluates: disjoint, all covered."""
  return [
    (p * num_examples // num_processes, (p + 1) * num_examples // num_processes)
    for p in range(num_processes)
  ]


def _stateless_seed(*parts: int) -> int:
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass
class Source:
  """A host-fed dataset: its metadata, and factories of this process's tf.data pipelines.

  train_examples(first_step, rows, global_batch, seed) -> tf.data.Dataset of (jpeg, label, seed)
    for this process's rows [start, stop) of every global batch from step first_step on.
  eval_examples(start, stop) -> tf.data.Dataset of (jpeg, label), validation examples
    start..stop-1.
  """

  name: str
  num_classes: int
  num_train: int
  num_eval: int
  data: ml_collections.ConfigDict
  train_examples: Callable
  eval_examples: Callable

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.data.image_size, self.data.image_size, 3)

  def train_dataset(self, first_step: int, rows: tuple[int, int], global_batch: int, seed: int):
    """This process's local training batches {"images": uint8, "labels": int32}, endless."""
    tf = _tf()
    size = self.data.image_size
    ds = self.train_examples(first_step, rows, global_batch, seed)
    ds = ds.map(
      lambda jpeg, label, s: {"images": decode_train(jpeg, s, size), "labels": label},
      num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.batch(rows[1] - rows[0], drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(self.data.num_threads))

  def eval_dataset(self, local_batch: int, num_processes: int, process_index: int):
    """(this process's padded local eval batches with "mask", number of batches).

    Every process returns the same number of batches; padding examples have mask 0.
    """
    tf = _tf()
    size, resize = self.data.image_size, self.data.eval_resize
    shares = eval_shares(self.num_eval, num_processes)
    num_batches = max(-(-(stop - start) // local_batch) for start, stop in shares)
    start, stop = shares[process_index]
    ds = self.eval_examples(start, stop).take(stop - start)
    ds = ds.map(
      lambda jpeg, label: {
        "images": decode_eval(jpeg, size, resize),
        "labels": label,
        "mask": tf.ones((), tf.float32),
      },
      num_parallel_calls=tf.data.AUTOTUNE,
    )
    padding = tf.data.Dataset.from_tensors(
      {
        "images": tf.zeros((size, size, 3), tf.uint8),
        "labels": tf.zeros((), tf.int32),
        "mask": tf.zeros((), tf.float32),
      }
    ).repeat()
    ds = ds.concatenate(padding).take(num_batches * local_batch).batch(local_batch)
    ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options(self.data.num_threads))
    return ds, num_batches


def _load_tfds(data: ml_collections.ConfigDict) -> Source:
  tf = _tf()
  import tensorflow_datasets as tfds

  builder = tfds.builder("imagenet2012", data_dir=data.tfds_data_dir or None)
  if not builder.is_prepared():
    if jax.process_count() > 1:
      raise InputError(
        f"tfds imagenet2012 is not prepared in {builder.data_dir}; prepare it once before a "
        f"multi-process run: tfds build imagenet2012 --manual_dir=FOLDER --data_dir=DATA"
      )
    try:
      kwargs = {}
      if data.manual_dir:
        kwargs["download_config"] = tfds.download.DownloadConfig(manual_dir=data.manual_dir)
      builder.download_and_prepare(**kwargs)
    except Exception as e:  # tfds raises many types for missing or bad archives
      first_line = (str(e).strip().splitlines() or [""])[0][:200]
      raise InputError(
        f"tensorflow-datasets could not prepare imagenet2012 in {builder.data_dir} "
        f"({type(e).__name__}: {first_line}); put ILSVRC2012_img_train.tar and "
        f"ILSVRC2012_img_val.tar in data.manual_dir"
      ) from e
  decoders = {"image": tfds.decode.SkipDecoding()}

  def read(split, **kwargs):
    ds = builder.as_dataset(split=split, decoders=decoders, **kwargs)
    return ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))

  def count(split) -> int:
    n = int(read(split).cardinality())
    if n < 0:
      raise InputError(f"tfds imagenet2012 cannot tell the size of its {split!r} split")
    return n

  def train_examples(first_step, rows, global_batch, seed):
    del global_batch  # each process reads its own shard, whatever rows it holds
    process_seed = _stateless_seed(seed, jax.process_index(), first_step)
    split = tfds.split_for_jax_process(TRAIN_SPLIT, drop_remainder=True)
    ds = read(
      split, shuffle_files=True, read_config=tfds.ReadConfig(shuffle_seed=process_seed)
    ).repeat()
    ds = ds.shuffle(data.shuffle_buffer, seed=process_seed).enumerate()
    return ds.map(lambda k, ex: (ex[0], ex[1], tf.stack([tf.constant(process_seed, tf.int64), k])))

  def eval_examples(start, stop):
    return read(f"{EVAL_SPLIT}[{start}:{stop}]")

  num_classes = builder.info.features["label"].num_classes
  return Source(
    "imagenet2012",
    num_classes,
    count(TRAIN_SPLIT),
    count(EVAL_SPLIT),
    data,
    train_examples,
    eval_examples,
  )


def synthetic_jpegs(
  num_images: int, shape: tuple[int, int], num_classes: int, seed: int = 0
) -> tuple[list[bytes], np.ndarray]:
  """`num_images` JPEGs of `shape` (height, width), smooth noise tinted by their label.

  Returns (JPEG bytes, int32 labels); image j has label j % num_classes.
  """
  tf = _tf()
  rng = np.random.default_rng(seed)
  height, width = shape
  tints = rng.uniform(40, 215, size=(num_classes, 3))
  jpegs = []
  for j in range(num_images):
    coarse = rng.normal(0, 20, size=(max(1, height // 16), max(1, width // 16), 3))
    smooth = tf.image.resize(coarse, (height, width), tf.image.ResizeMethod.BICUBIC).numpy()
    fine = rng.normal(0, 24, size=(height, width, 3))  # about the size of ImageNet JPEGs
    image = np.clip(tints[j % num_classes] + smooth + fine, 0, 255).astype(np.uint8)
    jpegs.append(tf.io.encode_jpeg(image, quality=90).numpy())
  return jpegs, (np.arange(num_images) % num_classes).astype(np.int32)


def _load_synthetic(data: ml_collections.ConfigDict) -> Source:
  tf = _tf()
  num_classes = data.synthetic_num_classes
  jpegs, labels = synthetic_jpegs(
    data.synthetic_num_images, tuple(data.synthetic_image_shape), num_classes
  )
  jpegs, labels = tf.constant(jpegs), tf.constant(labels)
  pool = len(labels)

  def example(index):
    return tf.gather(jpegs, index % pool), tf.gather(labels, index % pool)

  def train_examples(first_step, rows, global_batch, seed):
    # Example `step * global_batch + row` depends on nothing else: the same global batch
    # whatever the number of processes, and a resumed run continues the same sequence.
    start, stop = rows
    steps = tf.data.Dataset.range(first_step, np.iinfo(np.int64).max)
    indices = steps.flat_map(
      lambda s: tf.data.Dataset.range(s * global_batch + start, s * global_batch + stop)
    )
    return indices.map(
      lambda i: (*example(i), tf.stack([tf.constant(seed, tf.int64), i])),
    )

  def eval_examples(start, stop):
    # Validation examples follow the training pool shifted by one, so they differ from it.
    return tf.data.Dataset.range(start, stop).map(lambda i: example(i + 1))

  return Source(
    "imagenet_synthetic",
    num_classes,
    data.synthetic_train_size,
    data.synthetic_eval_size,
    data,
    train_examples,
    eval_examples,
  )


def load(data: ml_collections.ConfigDict) -> Source:
  """The source of config.data (metadata only; nothing is decoded yet)."""
  if data.name == "imagenet2012":
    return _load_tfds(data)
  if data.name == "imagenet_synthetic":
    return _load_synthetic(data)
  raise InputError(
    f"unknown host-fed data.name {data.name!r}; allowed: imagenet2012, imagenet_synthetic"
  )


# ----------------------------------------------------------------------------- global batches


def train_batches(source: Source, sharding, global_batch: int, first_step: int, seed: int):
  """Endless global training batches {"images", "labels"}, starting at step `first_step`."""
  rows = process_rows(sharding, global_batch)
  ds = source.train_dataset(first_step, rows, global_batch, seed)
  return global_batches(ds, sharding, global_batch, source.data.prefetch_batches)


def eval_batches(source: Source, sharding, global_batch: int):
  """(global eval batches {"images", "labels", "mask"} over the whole split, their number)."""
  start, stop = process_rows(sharding, global_batch)
  ds, num_batches = source.eval_dataset(stop - start, jax.process_count(), jax.process_index())
  return global_batches(ds, sharding, global_batch, source.data.prefetch_batches), num_batches


# ----------------------------------------------------------------------------- the feed


class HostFedFeed:
  """Batches decoded on this process's CPU threads and assembled into global arrays."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config, self.source = config, load(config.data)
    self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    self.num_train = self.source.num_train
    s = self.source
    self.spec = DataSpec(s.num_classes, s.image_shape, MEAN_RGB, STD_RGB)

  def train_step(self, update, first_step: int, teacher=None):
    """step(state) -> (state, metrics); `teacher` (a pytree or None) goes to update unchanged,
    as an argument of the jitted step that is not donated (it serves every step)."""
    c = self.config
    batches = train_batches(self.source, self.sharding, c.batch_size, first_step, c.seed)
    step = jax.jit(lambda state, b, t: update(state, b["images"], b["labels"], t), donate_argnums=0)
    return lambda state: step(state, next(batches), teacher)

  def evaluator(self, eval_sums):
    step = jax.jit(lambda state, b: eval_sums(state, b["images"], b["labels"], b["mask"]))

    def evaluate(state):
      batches, _ = eval_batches(self.source, self.sharding, self.config.eval_batch_size)
      return summarize(step(state, b) for b in batches)

    return evaluate
