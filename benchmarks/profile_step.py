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

import collections
import gzip
import json
import os
import pathlib
import re
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

FLAGS = flags.FLAGS
flags.DEFINE_integer("warmup", 3, "Untraced steps after the compiling one.")
flags.DEFINE_integer("top", 25, "Ops in the table.")
flags.DEFINE_string("output", "", "The table's file (default: printed only).")
flags.DEFINE_float("keep_trace_mb", 20.0, "Keep the raw trace beside --output up to this size.")
UNUSED = ("variants", "repeats", "epoch_images")  # train_speed.py's, not this script's

# Lines of a device's trace that repeat its ops' time (modules, steps, name scopes, source).
DERIVED = re.compile(r"XLA Modules|Steps|Framework|Name Scope|Source|TensorFlow Ops", re.I)


def load_trace(folder: pathlib.Path) -> tuple[pathlib.Path, list[dict]]:
  """(file, events) of the trace jax.profiler wrote under folder (perfetto_trace.json.gz, or
  any *.trace.json.gz)."""
  files = sorted(folder.rglob("perfetto_trace.json.gz")) or sorted(folder.rglob("*.trace.json.gz"))
  if not files:
    raise SystemExit(f"error: jax.profiler wrote no .trace.json.gz under {folder}")
  with gzip.open(files[-1], "rt") as f:
    data = json.load(f)
  return files[-1], data["traceEvents"] if isinstance(data, dict) else data


def op_events(events: list[dict]) -> tuple[str, list[dict]]:
  """(where the ops came from, the complete events of XLA ops): see the module docstring."""
  process, thread = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      process[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      thread[(e["pid"], e.get("tid"))] = e["args"]["name"]
  complete = [e for e in events if e.get("ph") == "X" and e.get("dur") is not None]
  devices = {p for p, name in process.items() if str(name).startswith("/device:")}
  on_device = [e for e in complete if e["pid"] in devices]
  if on_device:
    xla_ops = [e for e in on_device if thread.get((e["pid"], e.get("tid"))) == "XLA Ops"]
    if xla_ops:
      return "device, the trace's XLA Ops line", xla_ops
    kept = [e for e in on_device if not DERIVED.search(thread.get((e["pid"], e.get("tid")), ""))]
    return "device, kernels of its streams by hlo_op", kept
  return "host CPU threads (XLA:CPU), events that name an hlo_op", [
    e for e in complete if "hlo_op" in (e.get("args") or {})
  ]


def op_name(event: dict) -> str:
  return (event.get("args") or {}).get("hlo_op") or event["name"]


def kind(name: str) -> str:
  """An op's kind: its name without the number XLA appends ("fusion.12" -> "fusion")."""
  return re.sub(r"[.:]\d+$", "", name)


def busy_us(events: list[dict]) -> float:
  """Microseconds in which at least one of the events ran (the union of their intervals)."""
  total, end = 0.0, -float("inf")
  for start, stop in sorted((e["ts"], e["ts"] + e["dur"]) for e in events):
    if stop > end:
      total += stop - max(start, end)
      end = stop
  return total


def summarize(events: list[dict], steps: int, top: int) -> tuple[list[str], float]:
  """The table's lines, and the ops' summed time in microseconds."""
  by_op = collections.defaultdict(lambda: [0, 0.0])
  for e in events:
    by_op[op_name(e)][0] += 1
    by_op[op_name(e)][1] += e["dur"]
  by_kind = collections.defaultdict(lambda: [0, 0.0])
  for name, (calls, us) in by_op.items():
    by_kind[kind(name)][0] += calls
    by_kind[kind(name)][1] += us
  total = sum(us for _, us in by_op.values())
  lines = []
  for title, table, n in (("ops", by_op, top), ("kinds of op", by_kind, top)):
    lines.append(f"\ntop {min(n, len(table))} {title} by time")
    header = f"{'op':<44} {'calls':>6} {'total ms':>10} {'ms/step':>9} {'share':>7}"
    lines.append(f"{'rank':>4}  {header}")
    ranked = sorted(table.items(), key=lambda item: -item[1][1])[:n]
    for rank, (name, (calls, us)) in enumerate(ranked, start=1):
      share = 100 * us / total if total else 0.0
      lines.append(
        f"{rank:>4}  {name[:44]:<44} {calls:>6} {us / 1e3:>10.3f} {us / 1e3 / steps:>9.3f} "
        f"{share:>6.1f} %"
      )
  return lines, total


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
