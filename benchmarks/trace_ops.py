"""A jax.profiler trace as a table of XLA ops (benchmarks/profile_step.py's reading of it).

No flags and no jax here, so that tests can import it without defining absl flags.
"""

import collections
import gzip
import json
import pathlib
import re

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


if __name__ == "__main__":  # a library of profile_step.py; run alone, it says so
  import sys

  print(__doc__.strip() + "\nRun benchmarks/profile_step.py (--help) for the profile itself.")
  sys.exit(0 if sys.argv[1:] in ([], ["-h"], ["--help"]) else 2)
