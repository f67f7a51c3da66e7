"""Several training runs at once on one device, resumably, chained, into one CSV of results.

python -m launch.multi_run --runs=RUNS.csv --root=DIR [--parallel=2] [--budget_s=540] \
  [--results=DIR/results.csv] [--epochs_csv=DIR/epochs.csv] [--skip_csv=FILE ...] \
  [--only=NAME,...] [--check] [-- --config.KEY=VALUE ...]

RUNS.csv lists the runs, one line each (blank lines and lines starting with # are skipped;
launch/run_list.py reads and checks it):

  name,config,overrides,seeds,epochs,teacher,init_from,estimate_s
  binary_default,configs/vgg_small.py,,0,200,,,250
  xnor,configs/vgg_small.py,binary.weight_scale=mean_abs optimizer.scale_l2=0.0,0 1,40
  float,configs/vgg_small_fp.py,,0,60
  kd,configs/vgg_small_kd.py,,0,60,float

overrides: space-separated KEY=VALUE config overrides; seeds: space-separated seeds (default 0);
epochs: config.num_epochs (empty: the config's); the last three columns may be left out (old
5-column lists work as before). Flags after `--` go to every run.

Chains: teacher (init_from) names another run of the list whose workdir this run gets as
--config.distill.teacher_workdir (--config.init.from_workdir). Run (NAME, SEED) reads the
source's run of the same seed where the source has it, else the source's only seed. It starts
only when that run has finished with status done (in this call or an earlier one: its workdir
holds result.json); until then independent runs take the free places. Where the source failed,
diverged, was skipped or did not finish in the budget, the run is skipped: a printed line and a
results row with status `skipped` and the reason; the other runs go on. The list is checked
before anything starts: a malformed line, an unknown source, a run that names itself, a cycle
of sources -> one sentence naming the row, exit 2 (--check: only that, and the estimate).
estimate_s (seconds each run adds to the call) is added up and printed at the start, with the
longest chain's.

Each (name, seed) trains in DIR/NAME/seed_SEED as `python -m bnn_jax.main` in its own process,
PARALLEL of them at a time on this machine's one device, each with a share of the accelerator's
memory (XLA_PYTHON_CLIENT_MEM_FRACTION = --memory/PARALLEL). The GPU time-slices between their
kernels: runs at once gain where one run alone leaves it idle (benchmarks/end_to_end.py measures
it). Resuming: a run whose workdir holds result.json, or whose (name, seed) is a row of a
--skip_csv file (rows with status skipped aside), is not run again (a dependent run can start
from it); an interrupted run resumes from its last checkpoint (bnn_jax does that). With
--budget_s, no run starts when less than --min_start_s is left, and at the end of the budget the
runs still going are stopped (they resume from their last checkpoint next time).

Written for each finished run: WORKDIR/result.json and WORKDIR/test_accuracy.csv (one row per
evaluation: epoch, step, test accuracy and loss, from metrics.jsonl), and a row of --results:
name, config, overrides, seed, status (done; diverged: the loss or the parameters became NaN;
skipped), test accuracy (the last evaluation), best test accuracy, epochs, steps, wall time (all
its processes), images/s (median of its log windows), device, data, sources (teacher=NAME/seed_S
init_from=...), reason (why a run was skipped). --epochs_csv collects the evaluations of every
run of the list that has any, finished or not. Nothing here imports JAX: the launcher holds no
accelerator memory.
"""

import argparse
import dataclasses
import json
import math
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

from launch.run_list import SOURCE_COLUMNS, Run, RunListError, describe_estimate, read_runs
from launch.run_results import (
  EPOCH_COLUMNS,
  RESULT_COLUMNS,
  evaluations,
  finished_keys,
  read_csv,
  read_metrics,
  result_row,
  write_csv,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULT_FILE = "result.json"
STATE_FILE = "multi_run.json"  # wall seconds of the run's processes so far
DIVERGED = ("the training loss became", "the parameters became NaN or infinite")


def probe_device() -> str:
  """ "N x KIND" of the device JAX sees, asked of a short process that preallocates nothing."""
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
  code = "import jax; d = jax.devices(); print(f'{len(d)} x {d[0].device_kind}')"
  out = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
  )
  lines = out.stdout.strip().splitlines()
  return lines[-1] if out.returncode == 0 and lines else "unknown"


# ----------------------------------------------------------------------------- running

# What happened to a run that is not (or no longer) pending, in the words of a skipped run's
# reason ("its teacher NAME seed S ..."). "done" is the one state a dependent run can start from.
OUTCOMES = {
  "failed": "failed",
  "diverged": "diverged",
  "skipped": "was skipped",
  "stopped": "did not finish (time budget)",
  "not started": "did not start (time budget)",
}
WAIT = "wait"  # Launcher.blocker: a source is still to run


@dataclasses.dataclass
class Active:
  run: Run
  process: subprocess.Popen
  started: float
  log: object


class Launcher:
  """Runs the list's unfinished runs, `parallel` at a time, sources before the runs that read
  them, within an optional time budget."""

  def __init__(self, args, runs: list[Run], extra: list[str]):
    self.args, self.runs, self.extra = args, runs, extra
    self.root = pathlib.Path(args.root).resolve()
    self.results = pathlib.Path(args.results or self.root / "results.csv")
    self.epochs_csv = pathlib.Path(args.epochs_csv or self.root / "epochs.csv")
    self.deadline = time.time() + args.budget_s if args.budget_s else math.inf
    self.device = args.device
    self.failed, self.stopped, self.skipped = [], [], []
    # (name, seed) -> "pending", "active", "done", "diverged", "failed", "skipped", "stopped",
    # "not started", or "listed" (a --skip_csv row whose workdir holds no result.json)
    self.state: dict[tuple[str, str], str] = {}

  def log(self, message: str) -> None:
    print(f"[multi_run {time.strftime('%H:%M:%S')}] {message}", flush=True)

  def pending(self) -> list[Run]:
    """Runs without a result: not in a skip CSV, no result.json (its row is re-added if lost)."""
    skip = finished_keys(self.args.skip_csv)
    out = []
    for run in self.runs:
      workdir = run.workdir(self.root)
      status = self.status_on_disk(workdir)
      if not (ROOT / run.config_file).is_file():  # one bad line must not cost the others a turn
        self.failed.append(run)
        status = "failed"
        self.log(f"FAILED {run.name} seed {run.seed}: config file {run.config} does not exist")
      elif run.key in skip:
        status = status or "listed"
        self.log(f"skip {run.name} seed {run.seed}: in {', '.join(self.args.skip_csv)}")
      elif status:
        self.log(f"skip {run.name} seed {run.seed}: finished in {workdir}")
        self.record(json.loads((workdir / RESULT_FILE).read_text()))
      else:
        status = "pending"
        out.append(run)
      self.state[run.key] = status
    return out

  @staticmethod
  def status_on_disk(workdir: pathlib.Path) -> str | None:
    """The status in a run's result.json ("done", "diverged"); None where it has none."""
    try:
      return json.loads((workdir / RESULT_FILE).read_text()).get("status", "done")
    except (OSError, json.JSONDecodeError):
      return None

  def blocker(self, run: Run) -> str | None:
    """None: every run that `run` reads is done; WAIT: one is still to run; else the reason
    why `run` cannot run ("its teacher NAME seed S failed")."""
    waiting = False
    for key, (name, seed) in run.sources:
      workdir = self.root / name / f"seed_{seed}"
      state = self.state.get((name, str(seed))) or self.status_on_disk(workdir)
      what = f"its {SOURCE_COLUMNS[key]} {name} seed {seed}"
      if state == "done":
        continue
      if state in ("pending", "active"):
        waiting = True
      elif state in OUTCOMES:
        return f"{what} {OUTCOMES[state]}"
      elif state == "listed":
        return f"{what} is a row of --skip_csv but {workdir} holds no {RESULT_FILE} here"
      else:  # not in this call's list (--only) and not finished
        return f"{what} has not finished ({workdir} holds no {RESULT_FILE})"
    return WAIT if waiting else None

  def skip_blocked(self, pending: list[Run]) -> list[Run]:
    """Skips (a row and a line each) the pending runs whose sources cannot finish; the rest."""
    changed = True
    while changed:  # a skipped run skips the runs that read it in turn
      changed = False
      for run in list(pending):
        reason = self.blocker(run)
        if reason not in (None, WAIT):
          pending.remove(run)
          self.skip(run, reason)
          changed = True
    return pending

  def skip(self, run: Run, reason: str) -> None:
    self.state[run.key] = "skipped"
    self.skipped.append(run)
    self.log(f"skipped {run.name} seed {run.seed}: {reason}")
    row = dict.fromkeys(RESULT_COLUMNS, "")
    row.update(name=run.name, config=run.config, overrides=" ".join(run.overrides))
    row.update(seed=run.seed, status="skipped", sources=run.describe_sources(), reason=reason)
    self.record(row)

  def record(self, row: dict) -> None:
    """Adds (or replaces) the run's row in the results CSV."""
    rows = [
      r for r in read_csv(self.results) if (r["name"], r["seed"]) != (row["name"], str(row["seed"]))
    ]
    write_csv(self.results, RESULT_COLUMNS, rows + [row])

  def start(self, run: Run) -> Active:
    workdir = run.workdir(self.root)
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{self.args.memory / self.args.parallel:.3f}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    command = run.command(self.root, self.extra)
    log = (workdir / "train.log").open("a")
    log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n")
    log.flush()
    sources = f" ({run.describe_sources()})" if run.sources else ""
    self.log(f"start {run.name} seed {run.seed} in {workdir}{sources}")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    self.state[run.key] = "active"
    return Active(run, process, time.time(), log)

  def finish(self, active: Active, stopped: bool) -> None:
    """Books a process that ended: wall time, and a result where the run finished or diverged."""
    active.log.close()
    run, code = active.run, active.process.returncode
    workdir = run.workdir(self.root)
    state_file = workdir / STATE_FILE
    state = json.loads(state_file.read_text()) if state_file.exists() else {"wall_s": 0.0}
    state["wall_s"] += time.time() - active.started
    state_file.write_text(json.dumps(state))
    tail = (workdir / "train.log").read_text()[-4000:]
    if stopped:
      self.stopped.append(run)
      self.state[run.key] = "stopped"
      self.log(f"stopped {run.name} seed {run.seed} (time budget); it resumes next time")
      return
    if code == 0:
      status = "done"
    elif code == 2 and any(d in tail for d in DIVERGED):
      status = "diverged"
    else:
      self.failed.append(run)
      self.state[run.key] = "failed"
      self.log(f"FAILED {run.name} seed {run.seed} (exit {code}); see {workdir / 'train.log'}")
      return
    self.state[run.key] = status
    if self.device is None:
      self.device = probe_device()
    row = result_row(run, workdir, status, state["wall_s"], self.device)
    write_csv(workdir / "test_accuracy.csv", EPOCH_COLUMNS, evaluations(read_metrics(workdir)))
    (workdir / RESULT_FILE).write_text(json.dumps(row, indent=1))
    self.record(row)
    self.log(
      f"{status} {run.name} seed {run.seed}: test accuracy {row['test_accuracy']:.4f} "
      f"(best {row['best_test_accuracy']:.4f}), {row['wall_s']} s"
    )

  def write_epochs(self) -> None:
    """All evaluations of the list's runs so far, finished or not, in one CSV."""
    rows = []
    for run in self.runs:
      for e in evaluations(read_metrics(run.workdir(self.root))):
        rows.append({"name": run.name, "seed": run.seed, **e})
    if rows:
      write_csv(self.epochs_csv, ("name", "seed", *EPOCH_COLUMNS), rows)

  def run(self) -> int:
    pending, active = self.pending(), []
    self.log(describe_estimate(pending, self.args.parallel))
    try:
      while True:
        pending = self.skip_blocked(pending)
        left = self.deadline - time.time()
        for run in [r for r in pending if self.blocker(r) is None]:  # sources done: ready
          if len(active) >= self.args.parallel or left < self.args.min_start_s:
            break
          pending.remove(run)
          active.append(self.start(run))
        if not active:  # nothing going: all done, or the rest wait for time (sources go first)
          break
        if left <= 0:
          for a in active:
            self.stop(a)
          active = []
          break
        time.sleep(self.args.poll_s)
        for a in [a for a in active if a.process.poll() is not None]:
          active.remove(a)
          self.finish(a, stopped=False)
    finally:  # an interrupted launcher must not leave runs going
      for a in active:
        self.stop(a)
      self.write_epochs()
    for run in pending:  # out of time: those that could start now wait for the next call
      if self.blocker(run) is None:
        self.state[run.key] = "not started"
        self.log(f"not started {run.name} seed {run.seed} (time budget); it starts next time")
    self.skip_blocked([r for r in pending if self.state[r.key] == "pending"])
    unfinished = len(self.stopped) + sum(s == "not started" for s in self.state.values())
    self.log(
      f"{len(self.runs)} runs in the list: {len(self.failed)} failed, {len(self.skipped)} "
      f"skipped, {unfinished} unfinished; results in {self.results}"
    )
    return 1 if self.failed else 0

  def stop(self, active: Active) -> None:
    """Stops a run that is still going (it keeps its last checkpoint) and books it."""
    stopped = active.process.poll() is None
    if stopped:
      active.process.terminate()
      try:
        active.process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        active.process.kill()
        active.process.wait()
    if not active.log.closed:
      self.finish(active, stopped=stopped)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", required=True, help="the run list file (CSV)")
  parser.add_argument("--root", required=True, help="workdirs go in ROOT/NAME/seed_SEED")
  parser.add_argument("--parallel", type=int, default=2, help="runs at once on the device")
  parser.add_argument("--memory", type=float, default=0.9, help="accelerator memory, shared")
  parser.add_argument("--results", help="results CSV (default ROOT/results.csv)")
  parser.add_argument("--epochs_csv", help="evaluations CSV (default ROOT/epochs.csv)")
  parser.add_argument(
    "--skip_csv", action="append", default=[], help="results CSV whose runs are skipped"
  )
  parser.add_argument("--budget_s", type=float, default=0, help="time budget; 0: none")
  parser.add_argument(
    "--min_start_s", type=float, default=60, help="start no run with less time than this left"
  )
  parser.add_argument("--only", default="", help="comma-separated run names to run")
  parser.add_argument("--device", help="the device column (default: asked of JAX)")
  parser.add_argument(
    "--check", action="store_true", help="only read and check the list, print its estimate"
  )
  parser.add_argument("--poll_s", type=float, default=1.0, help=argparse.SUPPRESS)
  parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then flags for every run")
  args = parser.parse_args(argv)
  if args.parallel < 1 or not 0 < args.memory <= 1:
    parser.error(f"--parallel {args.parallel} must be >= 1 and --memory {args.memory} in (0, 1]")
  return args


def main(argv=None) -> int:
  # A terminated launcher stops its runs first (the `finally` of Launcher.run).
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  args = parse_args(argv)
  extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
  try:
    runs = read_runs(args.runs)
  except RunListError as e:  # before anything starts
    print(e, file=sys.stderr)
    return 2
  only = [n for n in args.only.split(",") if n]
  unknown = sorted(set(only) - {r.name for r in runs})
  if unknown:
    print(f"error: --only names {unknown[0]!r}, which is not in {args.runs}", file=sys.stderr)
    return 2
  runs = [r for r in runs if not only or r.name in only]
  if args.check:
    print(f"run list {args.runs}: {len(runs)} runs; {describe_estimate(runs, args.parallel)}")
    return 0
  return Launcher(args, runs, extra).run()


if __name__ == "__main__":
  sys.exit(main())
