"""What launch/multi_run.py reads from a run's workdir and writes: results and evaluations CSVs."""

import csv
import json
import math
import pathlib
import statistics

from launch.run_list import Run

RESULT_COLUMNS = (
  "name",
  "config",
  "overrides",
  "seed",
  "status",
  "test_accuracy",
  "best_test_accuracy",
  "epochs",
  "steps",
  "wall_s",
  "images_per_sec",
  "device",
  "data",
  "sources",
  "reason",
)
EPOCH_COLUMNS = ("epoch", "step", "test_accuracy", "test_loss")


def finished_keys(csv_files) -> set[tuple[str, str]]:
  """(name, seed) of every row of the given results CSV files that exist, but skipped runs'."""
  keys = set()
  for file in csv_files:
    file = pathlib.Path(file)
    if file.exists():
      with file.open(newline="") as f:
        rows = csv.DictReader(f)
        keys |= {(r["name"], str(r["seed"])) for r in rows if r.get("status") != "skipped"}
  return keys


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  """The records of a run's metrics.jsonl (lines cut short by a killed process are skipped)."""
  path = workdir / "metrics.jsonl"
  rows = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def evaluations(rows: list[dict]) -> list[dict]:
  """One {epoch, step, test_accuracy, test_loss} per evaluation of the run, in step order."""
  out = {}
  for r in rows:
    if "eval/accuracy" in r:
      out[r["step"]] = {
        "epoch": r.get("epoch", ""),
        "step": r["step"],
        "test_accuracy": r["eval/accuracy"],
        "test_loss": r.get("eval/loss", ""),
      }
  return [out[s] for s in sorted(out)]


def result_row(run: Run, workdir: pathlib.Path, status: str, wall_s: float, device: str) -> dict:
  """The results CSV row of a finished run, from its workdir."""
  rows = read_metrics(workdir)
  evals = [e for e in evaluations(rows) if isinstance(e["test_accuracy"], float)]
  rates = [r["train/images_per_sec"] for r in rows if "train/images_per_sec" in r]
  try:
    config = json.loads((workdir / "config.json").read_text())
  except (OSError, json.JSONDecodeError):
    config = {}
  data = config.get("data.name", "")
  if config.get("data.path"):
    data += f":{pathlib.Path(config['data.path']).name}"
  return {
    "name": run.name,
    "config": run.config,
    "overrides": " ".join(run.overrides),
    "seed": run.seed,
    "status": status,
    "test_accuracy": evals[-1]["test_accuracy"] if evals else math.nan,
    "best_test_accuracy": max(e["test_accuracy"] for e in evals) if evals else math.nan,
    "epochs": evals[-1]["epoch"] if evals else "",
    "steps": max((r["step"] for r in rows), default=0),
    "wall_s": round(wall_s, 1),
    # The median of the log windows (the trainer times the compiling first call apart).
    "images_per_sec": round(statistics.median(rates), 1) if rates else "",
    "device": device,
    "data": data,
    "sources": run.describe_sources(),
    "reason": "",
  }


def write_csv(path: pathlib.Path, columns, rows: list[dict]) -> None:
  """Writes the rows whole, through a temporary file (a reader never sees half a file)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with tmp.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  tmp.replace(path)


def read_csv(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  with path.open(newline="") as f:
    return list(csv.DictReader(f))
