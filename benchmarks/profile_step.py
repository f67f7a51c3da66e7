"""Where a train step's time goes: a jax.profiler trace of a few steps, as a table of XLA ops.

  python benchmarks/profile_step.py --config=configs/vgg_small.py --batch_size=128 --steps=5 \
    --output=profile_binary.txt

Compiles the config's jitted, donated train step (benchmarks/train_speed.py's, on random data
already on the device; the config as it is: configs/vgg_small_fp.py for the float network),
runs --warmup steps, then traces --steps steps with jax.profiler (create_perfetto_trace: plain
JSON, no TensorBoard plugin needed) and sums the trace's op events by XLA op: calls, total time,
time a step, share. On a GPU the ops are the device's ("/device:..." processes: the "XLA Ops"
line where the trace has one, else the kernels of its streams, by their hlo_op); on a CPU, the
host threads' events that name an hlo_op (CPU time: ops on several threads overlap). Written to
--output: the machine and settings, the wall time of the traced steps, the ops' summed time and
the time at least one was running (busy), the top --top ops and the totals by kind of op (the
name without its number: fusion, convolution, ...). The raw trace is kept beside it
(OUTPUT.trace.json.gz) when it is at most --keep_trace_mb.
"""

import os
import pathlib
import shutil
import sys
import tempfile
import time

from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import machine  # noqa: E402
import train_speed  # noqa: E402  (defines --config, --batch_size, --steps)
from trace_ops import busy_us, load_trace, op_events, summarize  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("warmup", 3, "Untraced steps after the compiling one.")
flags.DEFINE_integer("top", 25, "Ops in the table.")
flags.DEFINE_string("output", "", "The table's file (default: printed only).")
flags.DEFINE_float("keep_trace_mb", 20.0, "Keep the raw trace beside --output up to this size.")
UNUSED = ("variants", "repeats", "epoch_images")  # train_speed.py's, not this script's


def profile(config, batch_size: int, steps: int, warmup: int, folder: pathlib.Path):
  """(wall seconds of the traced steps, trace file, events): `steps` steps traced after
  `warmup` untraced ones (and the compiling one)."""
  import jax

  variant = "binary" if config.model.binary else "float"
  timed = train_speed.prepare(config, variant, batch_size)  # compiles, runs one step
  if warmup:
    timed(warmup)
  with jax.profiler.trace(str(folder), create_perfetto_trace=True):
    wall = timed(steps)  # waits for the last step
  return (wall, *load_trace(folder))


def main(argv):
  del argv
  unused = [name for name in UNUSED if FLAGS[name].present]
  if unused or FLAGS.steps < 1 or FLAGS.warmup < 0 or FLAGS.top < 1:
    print(
      f"error: --{unused[0]} is train_speed.py's, not this script's"
      if unused
      else f"error: --steps {FLAGS.steps} and --top {FLAGS.top} must be >= 1, --warmup "
      f"{FLAGS.warmup} >= 0",
      file=sys.stderr,
    )
    sys.exit(2)
  config = FLAGS.config
  variant = "binary" if config.model.binary else "float"
  with tempfile.TemporaryDirectory(prefix="profile_step_") as folder:
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    folder = pathlib.Path(folder)
    wall, trace, events = profile(config, FLAGS.batch_size, FLAGS.steps, FLAGS.warmup, folder)
    source, ops = op_events(events)
    table, total_us = summarize(ops, FLAGS.steps, FLAGS.top)
    if not ops:
      raise SystemExit(f"error: the trace {trace.name} holds no XLA op events")
    busy = busy_us(ops)
    lines = [
      f"machine: {machine.describe()}",
      f"profile_step.py {started}: {config_flags.get_config_filename(FLAGS['config'])} "
      f"({variant}), model "
      f"{config.model.name} width {config.model.width}, batch {FLAGS.batch_size}, compute "
      f"{config.compute_dtype}; {FLAGS.steps} steps traced after {FLAGS.warmup} warm-up steps",
      f"ops from: {source}; {len(ops)} events in {trace.name}",
      f"traced steps: {wall * 1e3:.3f} ms wall ({wall * 1e3 / FLAGS.steps:.3f} ms a step, "
      f"{FLAGS.steps * FLAGS.batch_size / wall:.1f} images/s while tracing)",
      f"ops: {total_us / 1e3:.3f} ms summed ({total_us / 1e3 / FLAGS.steps:.3f} ms a step); "
      f"busy {busy / 1e3:.3f} ms ({100 * busy / 1e6 / wall:.1f} % of the wall)",
      *table,
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if FLAGS.output:
      output = pathlib.Path(FLAGS.output)
      output.parent.mkdir(parents=True, exist_ok=True)
      output.write_text(text)
      if trace.stat().st_size <= FLAGS.keep_trace_mb * 2**20:
        shutil.copyfile(trace, output.with_name(output.stem + ".trace.json.gz"))


if __name__ == "__main__":
  from bnn_jax import cli  # absl's app.run, but --help exits 0 and bad flags with one sentence

  cli.run(main)
