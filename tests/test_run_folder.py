"""The run folder: one run per workdir, nothing non-finite saved, metrics.jsonl across cuts."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from bnn_jax import run
from bnn_jax.errors import InputError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_main(workdir, *overrides):
  return subprocess.run(
    [sys.executable, "-m", "bnn_jax.main", "--config=configs/test.py", f"--workdir={workdir}",
     *overrides],
    cwd=ROOT,
    env=dict(os.environ),
    capture_output=True,
    text=True,
    timeout=600,
  )  # fmt: skip


def test_a_second_run_on_a_locked_workdir_is_refused_and_a_released_lock_is_taken(tmp_path):
  with run.locked(tmp_path):  # another run holds the workdir
    refused = run_main(tmp_path, "--config.max_steps=2")
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: workdir {tmp_path} is in use by another run (process ")
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was written
    with pytest.raises(InputError, match="is in use by another run"):
      with run.locked(tmp_path):
        pass
  # The holder ended (as a killed process's lock ends with it): the next run takes the workdir.
  taken = run_main(tmp_path, "--config.max_steps=2")
  assert taken.returncode == 0, taken.stderr[-3000:]
  assert (tmp_path / "checkpoints" / "2").is_dir()


@pytest.mark.slow  # trains through main in a new process
def test_an_infinite_learning_rate_stops_the_run_and_saves_nothing(tmp_path):
  result = run_main(tmp_path, "--config.optimizer.learning_rate=inf", "--config.max_steps=1")
  assert result.returncode == 2, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert "became NaN or infinite" in last or "the training loss became" in last, last
  assert "no checkpoint was saved" in last  # and it names none that does not exist
  assert "final test accuracy" not in result.stdout
  saved = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert saved == []


def test_metrics_log_is_strict_json_and_drops_cut_lines_and_replayed_steps(tmp_path):
  log = run.MetricsLog(tmp_path)
  for step in (1, 2, 3):
    log.write(step, {"train/loss": 1.0 / step})
  log.write(4, {"train/loss": math.nan, "eval/loss": math.inf})
  with log.path.open("a") as f:
    f.write('{"step": 5, "train/lo')  # a line cut by a kill
  rows = [json.loads(line) for line in log.path.read_text().splitlines()[:4]]  # strict JSON
  assert rows[3] == {"step": 4, "train/loss": "nan", "eval/loss": "inf"}
  log.start_at(2)  # the run resumes from the checkpoint of step 2
  assert [r["step"] for r in log.read()] == [1, 2]
  assert log.path.read_text().endswith("\n")  # the next record starts on a line of its own
  log.write(3, {"train/loss": 0.25})
  assert [r["step"] for r in log.read()] == [1, 2, 3]
