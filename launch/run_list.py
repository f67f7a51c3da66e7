"""The run list of launch/multi_run.py: its rows, their chains (teacher, init_from), its checks.

A run list is a CSV file (blank lines and lines starting with # are skipped) with the header

  name,config,overrides,seeds,epochs[,teacher,init_from,estimate_s]

name: letters, digits, '.', '_', '-'; config: a config file, or FILE:ARG (get_config(ARG));
overrides: space-separated KEY=VALUE config overrides (no --config.); seeds: space-separated
seeds (default 0); epochs: config.num_epochs (empty: the config's); teacher / init_from: the name
of another run of the list whose workdir goes into distill.teacher_workdir / init.from_workdir
(a chain: this run starts when that one has finished); estimate_s: the seconds each of the row's
runs adds to the call (its share of the device while the others run), summed into the list's
estimate. Columns may be left out from the right, so 5-column lists work as before.

The source of run (NAME, SEED): the source's run of the same seed where the source has it, else
the source's only seed (a teacher trained once teaches every seed); a source with several seeds
but not this one is an error. Bad lists (a malformed line, an unknown source, a run that names
itself, a cycle of sources, an unknown column) raise RunListError: one sentence naming the row.
"""

import csv
import dataclasses
import io
import pathlib
import shlex
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLUMNS = ("name", "config", "overrides", "seeds", "epochs", "teacher", "init_from", "estimate_s")
# The column that names a source run -> the config key that gets the source's workdir.
SOURCE_KEYS = {"teacher": "distill.teacher_workdir", "init_from": "init.from_workdir"}
SOURCE_COLUMNS = {key: column for column, key in SOURCE_KEYS.items()}


class RunListError(ValueError):
  """A bad run list: one sentence naming the file and the row (multi_run exits 2)."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the list: a config, its overrides, a seed, and the runs it reads."""

  name: str
  config: str
  overrides: tuple[str, ...]
  seed: int
  epochs: float | None
  # (config key, (source name, source seed)): the runs whose workdirs this one reads.
  sources: tuple[tuple[str, tuple[str, int]], ...] = ()
  estimate_s: float | None = None
  row: int = 0  # the row of the list it came from (1 = the first run line)

  @property
  def key(self) -> tuple[str, str]:
    return (self.name, str(self.seed))

  @property
  def config_file(self) -> str:
    """The config's file (FILE of FILE:ARG)."""
    return config_file(self.config)

  def workdir(self, root: pathlib.Path) -> pathlib.Path:
    return root / self.name / f"seed_{self.seed}"

  def source_workdirs(self, root: pathlib.Path) -> dict[str, pathlib.Path]:
    """{config key: the source run's workdir} of each run this one reads."""
    return {key: root / name / f"seed_{seed}" for key, (name, seed) in self.sources}

  def describe_sources(self) -> str:
    """'teacher=NAME/seed_S init_from=...': the results CSV's sources column."""
    return " ".join(f"{SOURCE_COLUMNS[k]}={n}/seed_{s}" for k, (n, s) in self.sources)

  def command(self, root: pathlib.Path, extra: list[str]) -> list[str]:
    """The bnn_jax.main command line of this run."""
    argv = [sys.executable, "-m", "bnn_jax.main", f"--config={self.config}"]
    argv += [f"--workdir={self.workdir(root)}", f"--config.seed={self.seed}"]
    if self.epochs is not None:
      argv.append(f"--config.num_epochs={self.epochs}")
    argv += [f"--config.{k}={w}" for k, w in self.source_workdirs(root).items()]
    return argv + list(extra) + [f"--config.{o}" for o in self.overrides]  # its own last: they win


def config_file(config: str) -> str:
  """FILE of a config argument FILE:ARG (as bnn_jax.cli reads it); the argument itself else."""
  if ":" in config and not pathlib.Path(config).exists() and not (ROOT / config).exists():
    return config.rsplit(":", 1)[0]
  return config


# ----------------------------------------------------------------------------- reading


def read_runs(path) -> list[Run]:
  """The runs of a run list file (see the module docstring); RunListError names a bad row."""
  path = pathlib.Path(path)
  try:
    lines = path.read_text().splitlines()
  except OSError as e:
    raise RunListError(f"error: run list {path} cannot be read ({e.strerror})") from e
  kept = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
  reader = csv.DictReader(io.StringIO("\n".join(kept)), skipinitialspace=True)
  unknown = [c for c in reader.fieldnames or () if c.strip() not in COLUMNS]
  if unknown:
    raise RunListError(
      f"error: run list {path} has the unknown column {unknown[0]!r}; the columns are "
      f"{','.join(COLUMNS)}"
    )
  runs = []
  for number, row in enumerate(reader, start=1):
    row = {k.strip(): v for k, v in row.items() if k is not None} | {None: row.get(None)}
    runs.extend(_runs_of(row, number, f"{path}, run {number}"))
  keys = [r.key for r in runs]
  repeated = sorted({k for k in keys if keys.count(k) > 1})
  if repeated:
    raise RunListError(f"error: run list {path} repeats (name, seed) {repeated[0]}")
  return _chained(runs, path)


def _runs_of(row: dict, number: int, where: str) -> list[Run]:
  missing = [c for c in ("name", "config") if not (row.get(c) or "").strip()]
  if missing or row[None] is not None:
    raise RunListError(
      f"error: {where}: a line needs name,config[,overrides,seeds,epochs,teacher,init_from,"
      f"estimate_s] (missing {', '.join(missing) or 'nothing'}, or too many fields: quote commas)"
    )
  name, config = row["name"].strip(), row["config"].strip()
  where = f"{where} ({name})"
  for column in ("name", "teacher", "init_from"):
    value = (row.get(column) or "").strip() if column != "name" else name
    if not all(c.isalnum() or c in "._-" for c in value):
      raise RunListError(
        f"error: {where}: {column} {value!r} may hold letters, digits, '.', '_', '-' only"
      )
  file = config_file(config)
  if not (ROOT / file).is_file() and pathlib.Path(file).is_file():
    config = str(pathlib.Path(file).resolve()) + config[len(file) :]  # runs start in ROOT
  overrides = tuple(shlex.split(row.get("overrides") or ""))
  bad = [o for o in overrides if "=" not in o or o.startswith("-")]
  if bad:
    raise RunListError(f"error: {where}: override {bad[0]!r} must be KEY=VALUE (no --config.)")
  try:
    seeds = [int(s) for s in (row.get("seeds") or "0").split()]
    epochs = float(row["epochs"]) if (row.get("epochs") or "").strip() else None
    estimate = float(row["estimate_s"]) if (row.get("estimate_s") or "").strip() else None
  except ValueError as e:
    raise RunListError(
      f"error: {where}: seeds must be integers, epochs and estimate_s numbers ({e})"
    ) from e
  if epochs is not None and not epochs > 0:
    raise RunListError(f"error: {where}: epochs = {epochs} must be a number > 0")
  if estimate is not None and not 0 <= estimate < float("inf"):
    raise RunListError(f"error: {where}: estimate_s = {estimate} must be a number >= 0 (seconds)")
  sources = []
  for column, key in SOURCE_KEYS.items():
    source = (row.get(column) or "").strip()
    if not source:
      continue
    if any(o.split("=", 1)[0] == key for o in overrides):
      raise RunListError(
        f"error: {where}: both the {column} column and the override {key}=... name its "
        f"{column} run; keep one"
      )
    sources.append((key, (source, None)))
  return [Run(name, config, overrides, s, epochs, tuple(sources), estimate, number) for s in seeds]


def _chained(runs: list[Run], path: pathlib.Path) -> list[Run]:
  """The runs with each source's seed chosen (see the module docstring); no cycles."""
  seeds: dict[str, list[int]] = {}
  for run in runs:
    seeds.setdefault(run.name, []).append(run.seed)
  out = []
  for run in runs:
    where = f"{path}, run {run.row} ({run.name})"
    resolved = []
    for key, (source, _) in run.sources:
      column = SOURCE_COLUMNS[key]
      if source == run.name:
        raise RunListError(f"error: {where}: its {column} is the run itself")
      if source not in seeds:
        raise RunListError(
          f"error: {where}: its {column} {source!r} is not a run of the list "
          f"({', '.join(sorted(seeds))})"
        )
      have = seeds[source]
      if run.seed not in have and len(have) > 1:
        raise RunListError(
          f"error: {where}: its {column} {source!r} has seeds {' '.join(map(str, have))} but "
          f"not seed {run.seed}: give it this seed too, or a single seed"
        )
      resolved.append((key, (source, run.seed if run.seed in have else have[0])))
    out.append(dataclasses.replace(run, sources=tuple(resolved)))
  _check_cycles(out, path)
  return out


def _check_cycles(runs: list[Run], path: pathlib.Path) -> None:
  """RunListError naming a row whose sources lead back to it."""
  edges: dict[str, set[str]] = {}
  rows: dict[str, int] = {}
  for run in runs:
    edges.setdefault(run.name, set()).update(name for _, (name, _) in run.sources)
    rows.setdefault(run.name, run.row)
  done: set[str] = set()

  def visit(name: str, trail: list[str]) -> None:
    if name in trail:
      cycle = trail[trail.index(name) :] + [name]
      raise RunListError(
        f"error: {path}, run {rows[cycle[0]]} ({cycle[0]}): its sources form a cycle "
        f"({' -> '.join(cycle)}); no run of it could ever start"
      )
    if name not in done:
      for source in sorted(edges[name]):
        visit(source, trail + [name])
      done.add(name)

  for run in runs:
    visit(run.name, [])


# ----------------------------------------------------------------------------- estimates


def chain_of(run: Run, runs: list[Run]) -> list[Run]:
  """The longest chain of sources that ends in `run` (by estimate_s), source first."""
  by_key = {(r.name, r.seed): r for r in runs}
  best: list[Run] = []
  for _, source in run.sources:
    chain = chain_of(by_key[source], runs) if source in by_key else []
    if sum(r.estimate_s or 0 for r in chain) >= sum(r.estimate_s or 0 for r in best):
      best = chain
  return best + [run]


def describe_estimate(runs: list[Run], parallel: int) -> str:
  """One line: the runs' estimates added up, and the longest chain at `parallel` runs at once."""
  if not runs:
    return "no runs to go"
  total = sum(r.estimate_s or 0 for r in runs)
  missing = sum(r.estimate_s is None for r in runs)
  chain = max((chain_of(r, runs) for r in runs), key=lambda c: sum(r.estimate_s or 0 for r in c))
  text = f"estimate for the {len(runs)} runs to go: {total:.0f} s (the sum of their estimate_s"
  text += f"; {missing} have none)" if missing else ")"
  if len(chain) > 1:
    chain_s = sum(r.estimate_s or 0 for r in chain)
    text += (
      f"; the longest chain {' -> '.join(r.name for r in chain)}: {chain_s:.0f} s of estimates, "
      f"about {parallel * chain_s:.0f} s of wall time with {parallel} at once"
    )
  return text


if __name__ == "__main__":  # a library of launch/multi_run.py; run alone, it says so
  print(__doc__.strip())
  print(
    "\nA library of launch/multi_run.py; to check a list: python launch/multi_run.py --check LIST"
  )
  sys.exit(0 if sys.argv[1:] in ([], ["-h"], ["--help"]) else 2)
