"""Where the trainer's time per step goes: the bare step, batch gathering, augmentation, metrics
keeping and evaluation, against the whole trainer, in one process.

  python benchmarks/trainer_parts.py --config=configs/vgg_small.py --config.model.width=0.125 \
    --batch_size=128 [--steps_per_call=1] [--train_size=50000] [--test_size=10000]

Rows, each in ms per training step (the median of --repeats timings of --steps steps):
  (a) step       train_speed.py's figure: the jitted, donated update on one fixed batch
  (b) gather     the batch's indices (from the epoch's permutation, drawn once an epoch) and the
                 images and labels taken from the training set on the device, as in_memory's
                 train step does, jitted alone; "as before 1838b6c" draws the permutation in
                 every call (every step at steps_per_call 1), as the step did until then
  (c) augment    in_memory.augment (config.data.augment) and mix_and_cut, jitted alone: the
                 config's switches, then cutout 16, mixup 0.2 and cutmix 1.0 each on their own
  (d) metrics    progress.Progress keeping the step's metrics (already computed) and flushing
                 them every --window_steps steps: the device-to-host fetch, the checks, the
                 metrics.jsonl rows and the log line
  (e) eval       the in-memory evaluator over --test_size test images, divided by the training
                 steps between two evaluations (config.eval_every_epochs of --train_size images)
  (f) trainer    end_to_end.py's figure: train_and_evaluate on fake data of the same shape, the
                 median of its log windows (they leave out evaluation, checkpoints and compiling)
(b), (c) and (d) run inside (f); (a) is (f) without them. Shares are of (f) (of (f) + (e) for
(e)). The parts, timed alone, pay a dispatch each that the trainer's one program does not: their
sum may exceed (f) by a little. Both halves of every ratio come from this one run: compare
ratios, with the machine and load lines.
"""

import os
import statistics
import sys
import tempfile
import time

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import end_to_end  # noqa: E402  (its flags and train_speed's: --config, --batch_size, ...)
import machine  # noqa: E402
import train_speed  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("test_size", 10_000, "Fake test images the evaluation goes through.")
flags.DEFINE_list(
  "switches",
  ["cutout=16", "mixup_alpha=0.2", "cutmix_alpha=1.0"],
  "config.data key=value switches, each timed on its own in (c).",
)


def timed_median(run_steps) -> float:
  """ms per step: the median of --repeats timings of run_steps(--steps) (which waits)."""
  seconds = [run_steps(FLAGS.steps) for _ in range(FLAGS.repeats)]
  return 1000 * statistics.median(seconds) / FLAGS.steps


def loop(fn, block):
  """run(n) -> seconds of fn(i) for i < n, then block(last result), after one warm-up call."""
  block(fn(0))

  def run(n: int) -> float:
    start = time.perf_counter()
    out = None
    for i in range(n):
      out = fn(i)
    block(out)
    return time.perf_counter() - start

  return run


def gather_ms(feed, config, steps_per_call: int) -> tuple[float, float]:
  """(b): (ms per step now, ms per step before 1838b6c) of the batch of a step taken from the
  training set on the device, as in_memory picks it: now with each epoch's permutation drawn
  once an epoch (the epochs a call can reach: 1 at steps_per_call 1, else 2), before with it
  drawn in every call (every step at steps_per_call 1)."""
  import jax
  import jax.numpy as jnp

  from bnn_jax.data import in_memory

  data = feed._replicated({"images": feed.ds.train_images, "labels": feed.ds.train_labels})
  key = jax.random.split(jax.random.key(config.seed))[0]
  per_epoch = feed.num_train // config.batch_size
  spanned = 1 if steps_per_call == 1 else 2

  @jax.jit
  def permutations(epoch):
    return jnp.stack(
      [in_memory.epoch_permutation(epoch + e, feed.num_train, key) for e in range(spanned)]
    )

  def take(data, perms, step, first):  # a call's batches from its epochs' permutations
    out = []
    for i in range(steps_per_call):
      idx = in_memory.batch_of_epoch(
        perms[(step + i) // per_epoch - first], step + i, config.batch_size
      )
      out.append((data["images"][idx], data["labels"][idx]))
    return out

  taken = jax.jit(take)
  drawn_in_call = jax.jit(
    lambda data, step: take(data, permutations(step // per_epoch), step, step // per_epoch)
  )
  perms = permutations(jnp.int32(0))
  block = jax.block_until_ready
  now = timed_median(loop(lambda i: taken(data, perms, jnp.int32(i * steps_per_call), 0), block))
  drawing = timed_median(loop(lambda i: permutations(jnp.int32(i)), block))
  before = timed_median(loop(lambda i: drawn_in_call(data, jnp.int32(i * steps_per_call)), block))
  return (now + drawing / per_epoch * steps_per_call) / steps_per_call, before / steps_per_call


def augment_ms(feed, config, switches: dict) -> float:
  """(c): augment and mix_and_cut of one batch, with config.data changed by `switches`."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bnn_jax.data import in_memory

  data_config = config.data.copy_and_resolve_references()
  data_config.update(switches)
  images = jnp.asarray(feed.ds.train_images[: config.batch_size])
  labels = jnp.asarray(feed.ds.train_labels[: config.batch_size])
  key = jax.random.split(jax.random.key(config.seed))[1]
  fill = np.round(np.asarray(feed.spec.mean) * 255).astype(np.uint8)

  @jax.jit
  def augmented(images, labels, step):
    step_key = jax.random.fold_in(key, step)
    images, mix = in_memory.augment(images, step_key, data_config.augment), None
    if any(data_config.get(k, 0) for k in in_memory.SWITCHES):
      images, mix = in_memory.mix_and_cut(images, labels, step_key, data_config, fill)
    return images, mix

  return timed_median(loop(lambda i: augmented(images, labels, i), jax.block_until_ready))


def metrics_ms(config, state_metrics, steps_per_call: int) -> float:
  """(d): Progress.add of each call's metrics and Progress.flush every --window_steps steps."""
  import pathlib

  import jax
  import jax.numpy as jnp

  from bnn_jax import progress, run

  metrics = state_metrics
  if steps_per_call > 1:  # stacked [k], as the loop returns them
    metrics = jax.tree.map(lambda m: jnp.stack([m] * steps_per_call), metrics)
  jax.block_until_ready(metrics)
  window = FLAGS.window_steps
  calls = -(-window // steps_per_call)
  with tempfile.TemporaryDirectory() as workdir:
    log = run.MetricsLog(pathlib.Path(workdir))
    keep = progress.Progress(config, 0, 10**9, log)
    done = [0]

    def windows(n: int) -> float:  # n windows of `window` steps
      start = time.perf_counter()
      for _ in range(n):
        for _ in range(calls):
          done[0] += steps_per_call
          keep.add(done[0], jax.tree.map(jnp.copy, metrics), steps_per_call)
        keep.flush(None)
      return time.perf_counter() - start

    windows(1)  # the first add times the compilation apart
    copies = timed_copies(metrics, calls)
    seconds = [windows(1) - copies for _ in range(FLAGS.repeats)]
  return 1000 * statistics.median(seconds) / window


def timed_copies(metrics, calls: int) -> float:
  """Seconds of the metric copies metrics_ms makes (the step hands out fresh arrays for free)."""
  import jax
  import jax.numpy as jnp

  start = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(jax.tree.map(jnp.copy, metrics))
  return time.perf_counter() - start


def eval_ms(feed, config, variant: str) -> tuple[float, int]:
  """(e): (ms of one evaluation over the test set per training step, steps between two)."""
  from bnn_jax import optim, run, train

  config = config.copy_and_resolve_references()
  config.model.binary = variant == "binary"
  per_epoch = feed.num_train // config.batch_size
  tx, _ = optim.make(config, per_epoch)
  graphdef, state = run.init_state(config, feed.spec, tx, run.make_mesh())
  evaluate = feed.evaluator(train.make_eval_sums(graphdef, feed.spec))
  evaluate(state)  # compiles
  every = max(1, optim.steps_from_epochs(config.eval_every_epochs, per_epoch))
  seconds = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    evaluate(state)  # returns floats: waited for
    seconds.append(time.perf_counter() - start)
  return 1000 * statistics.median(seconds) / every, every


def step_metrics(config, variant: str):
  """(ms per step of the bare step (a), one step's metrics on the device)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bnn_jax import optim, run, train
  from bnn_jax.data import DataSpec

  ms = timed_median(train_speed.prepare(config, variant, FLAGS.batch_size))
  config = config.copy_and_resolve_references()
  config.model.binary = variant == "binary"
  shape, classes = train_speed.data_shape(config)
  spec = DataSpec(classes, shape, (0.5,) * shape[-1], (0.25,) * shape[-1])
  tx, schedule = optim.make(config, steps_per_epoch=1000)
  graphdef, state = run.init_state(config, spec, tx, run.make_mesh())
  update = jax.jit(train.make_update(graphdef, tx, schedule, config, spec))
  images = jnp.zeros((FLAGS.batch_size, *shape), jnp.uint8)
  labels = jnp.asarray(np.arange(FLAGS.batch_size) % classes, jnp.int32)
  return ms, update(state, images, labels)[1]


def parse_switches() -> list[dict]:
  out = []
  for item in FLAGS.switches:
    key, value = item.split("=")
    out.append({key: type(FLAGS.config.data[key])(value)})
  return out


def main(argv):
  del argv
  from absl import logging

  from bnn_jax import run
  from bnn_jax.data import in_memory

  logging.set_verbosity(logging.WARNING)  # the trainer's and Progress's lines: not timed output
  config, variant = FLAGS.config, FLAGS.variants[0]
  ks = sorted({int(k) for k in FLAGS.steps_per_call})
  print(f"machine: {machine.describe()}")
  print(end_to_end.load())
  shape = "x".join(map(str, end_to_end.image_shape(config)))
  print(
    f"model {config.model.name} ({variant}) width {config.model.width}, batch "
    f"{FLAGS.batch_size}, images {shape}, compute {config.compute_dtype}, augment "
    f"{config.data.augment}; parts: {FLAGS.steps} steps x {FLAGS.repeats} timings, median; "
    f"fake data: {FLAGS.train_size} train, {FLAGS.test_size} test images (eval batch "
    f"{config.eval_batch_size}); trainer: {FLAGS.windows} windows of {FLAGS.window_steps} steps, "
    f"median",
    flush=True,
  )
  feed_config = end_to_end.trainer_config(config, variant, ks[0])
  feed_config.data.fake_test_size = FLAGS.test_size
  feed_config.eval_every_epochs = config.eval_every_epochs
  feed = in_memory.InMemoryFeed(feed_config, run.make_mesh())
  step, metrics = step_metrics(config, variant)
  evaluation, every = eval_ms(feed, feed_config, variant)
  augments = [(f"augment {config.data.augment}", augment_ms(feed, feed_config, {}))]
  for switches in parse_switches():
    name = ", ".join(f"{k} {v}" for k, v in switches.items())
    augments.append((f"  + {name}", augment_ms(feed, feed_config, switches)))
  for k in ks:
    gather, gather_before = gather_ms(feed, feed_config, k)
    kept = metrics_ms(feed_config, metrics, k)
    whole = FLAGS.batch_size / end_to_end.trainer_rate(config, variant, k) * 1000
    print(f"\nsteps_per_call {k}:            ms/step   share of (f)")
    rows = [
      ("(a) step (fixed batch)", step),
      ("(b) gather", gather),
      ("(b) gather as before 1838b6c", gather_before),
      *[(f"(c) {name}", ms) for name, ms in augments],
      (f"(d) metrics (flush every {FLAGS.window_steps})", kept),
      ("(f) trainer", whole),
      ("(a)+(b)+(c)+(d) (config's switches)", step + gather + augments[0][1] + kept),
    ]
    for name, ms in rows:
      print(f"  {name:<38} {ms:9.2f}   {ms / whole:6.1%}")
    print(
      f"  {f'(e) eval, every {every} steps':<38} {evaluation:9.2f}   "
      f"{evaluation / (whole + evaluation):6.1%} of (f)+(e)"
    )
    print(f"  step benchmark / trainer: {step / whole:.3f}", flush=True)
  print(end_to_end.load())


if __name__ == "__main__":
  from bnn_jax import cli  # absl's app.run, but --help exits 0 and bad flags with one sentence

  cli.run(main)
