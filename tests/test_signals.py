"""Ctrl-C and SIGTERM stop `python -m bnn_jax.main` cleanly at any moment (bnn_jax.interrupts).

Each test runs the real command on configs/test.py (12 steps on fake 8x8 data; checkpoints at
4, 8, 12) in a subprocess and signals it at a moment it detects from the run's own output:
log lines, or the lines of the BNN_JAX_TEST_HOLD hook, which holds the run at a step or a save
until the signal comes. Never a sleep. Every stop must print exactly one line on stderr after
the log, exit with 130 (SIGINT) or 143 (SIGTERM), and leave what the same command resumes from
exactly: the resumed run's per-step losses and evaluations equal a run never stopped
(conftest's tiny_run, the same config).
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from bnn_jax import checksums

ROOT = pathlib.Path(__file__).resolve().parents[1]
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
NAME = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
TIMEOUT = 900  # only against a hang; every wait below is for a condition


def start(workdir, env=None) -> subprocess.Popen:
  command = [
    sys.executable,
    "-m",
    "bnn_jax.main",
    "--config=configs/test.py",
    f"--workdir={workdir}",
  ]
  env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
  return subprocess.Popen(
    command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )


def signal_on(process: subprocess.Popen, triggers) -> tuple[str, str]:
  """Reads the process's stderr; sends sig when a line holds text, for each (text, sig) of
  `triggers` in order. Returns (stdout, stderr) once it ends."""
  triggers, lines = list(triggers), []
  for line in process.stderr:
    lines.append(line)
    if triggers and triggers[0][0] in line:
      process.send_signal(triggers.pop(0)[1])
  stdout = process.stdout.read()
  process.wait(TIMEOUT)
  assert not triggers, f"never saw {triggers[0][0]!r}:\n{''.join(lines)[-3000:]}"
  return stdout, "".join(lines)


def assert_one_line(process, stderr: str, sig: int, expected: str) -> None:
  """Exit status 128 + sig, and stderr ends with the one line `expected`, no crash before it."""
  assert process.returncode == STATUS[sig], stderr[-3000:]
  assert "Traceback" not in stderr and "Segmentation fault" not in stderr, stderr[-3000:]
  assert "Fatal Python error" not in stderr, stderr[-3000:]
  assert stderr.splitlines()[-1] == expected, stderr[-3000:]


def sealed(workdir) -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints"
  if not folder.exists():
    return []
  return sorted(
    int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / checksums.MANIFEST).exists()
  )


def records(workdir) -> list[dict]:
  return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").open()]


def losses(workdir) -> dict[int, float]:
  return {r["step"]: r["train/loss"] for r in records(workdir) if "train/loss" in r}


def evaluations(workdir) -> dict[int, tuple]:
  return {
    r["step"]: (r["eval/accuracy"], r["eval/loss"]) for r in records(workdir) if "eval/loss" in r
  }


def resume_and_compare(workdir, tiny_run, resumed_from: int) -> str:
  """Runs the same command again: it resumes from `resumed_from` and ends like tiny_run."""
  process = start(workdir)
  stdout, stderr = process.communicate(timeout=TIMEOUT)
  assert process.returncode == 0, stderr[-3000:]
  assert f"Resumed from the checkpoint of step {resumed_from}." in stderr, stderr[-3000:]
  _, reference, result = tiny_run
  assert f"final test accuracy {result['accuracy']:.4f}" in stdout
  # Exact: every step's loss and every evaluation, as in the run never stopped.
  assert losses(workdir) == losses(reference)
  assert evaluations(workdir) == evaluations(reference)
  assert sealed(workdir)[-1] == 12
  return stderr


def test_signal_before_the_first_compilation(tmp_path):
  workdir = tmp_path / "run"
  process = start(workdir)
  # Logged once the workdir is known, before the data, the model or anything is compiled.
  _, stderr = signal_on(process, [("vgg_small (binary, width 0.0625) on fake", signal.SIGTERM)])
  assert_one_line(
    process,
    stderr,
    signal.SIGTERM,
    "Stopped before the first step (SIGTERM); nothing to save; the same command starts again.",
  )
  assert not sealed(workdir)


@pytest.mark.slow
def test_ctrl_c_during_the_first_compilation_never_crashes(tmp_path):
  # Ctrl-C used to raise KeyboardInterrupt into the compilation: a segmentation fault, 4 in 4.
  for attempt in range(3):
    workdir = tmp_path / f"run_{attempt}"
    sig = (signal.SIGINT, signal.SIGTERM)[attempt % 2]
    # No compilation cache: the first step really compiles (seconds) after this log line.
    process = start(workdir, env={"JAX_ENABLE_COMPILATION_CACHE": "false"})
    _, stderr = signal_on(process, [("Training vgg_small (binary) on fake", sig)])
    assert "compiled and ran" not in stderr  # stopped before the first step ended
    assert_one_line(
      process,
      stderr,
      sig,
      f"Stopped before the first step ({NAME[sig]}); nothing to save; the same command starts "
      "again.",
    )
    assert not sealed(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_mid_epoch_saves_and_resumes_exactly(tmp_path, tiny_run, sig):
  workdir = tmp_path / "run"
  process = start(workdir, env={"BNN_JAX_TEST_HOLD": "step:6"})  # between checkpoints 4 and 8
  stdout, stderr = signal_on(process, [("holding at step 6", sig)])
  assert_one_line(
    process,
    stderr,
    sig,
    f"Stopped at step 6 of 12 ({NAME[sig]}); saved a checkpoint; the same command resumes "
    "from step 6.",
  )
  assert "final test accuracy" not in stdout
  assert sealed(workdir) == [4, 6]
  assert max(losses(workdir)) == 6  # the metrics up to the step it stopped at are written
  resume_and_compare(workdir, tiny_run, 6)


@pytest.mark.slow
def test_stop_during_the_first_evaluation(tmp_path, tiny_run):
  workdir = tmp_path / "run"
  process = start(workdir)
  # Logged just before the first evaluation (which compiles) begins.
  _, stderr = signal_on(process, [("step 4/12: train loss", signal.SIGINT)])
  line = stderr.splitlines()[-1]
  stopped = re.fullmatch(
    r"Stopped at step (\d+) of 12 \(Ctrl-C\); saved a checkpoint; the same command resumes "
    r"from step \1\.",
    line,
  )
  assert stopped, stderr[-3000:]
  assert_one_line(process, stderr, signal.SIGINT, line)
  step = int(stopped.group(1))
  assert 4 <= step < 12 and sealed(workdir)[-1] == step
  # An evaluation the stop skipped or abandoned runs when the run resumes.
  resume_and_compare(workdir, tiny_run, step)


@pytest.mark.slow
def test_a_save_in_progress_completes(tmp_path, tiny_run):
  workdir = tmp_path / "run"
  # Checkpoint 4 is written, not yet sealed: the signal comes while it is being saved.
  process = start(workdir, env={"BNN_JAX_TEST_HOLD": "seal:4"})
  _, stderr = signal_on(process, [("holding at seal 4", signal.SIGTERM)])
  line = stderr.splitlines()[-1]
  stopped = re.fullmatch(r"Stopped at step (\d+) of 12 \(SIGTERM\); saved a checkpoint; .*", line)
  assert stopped, stderr[-3000:]
  assert_one_line(process, stderr, signal.SIGTERM, line)
  step = int(stopped.group(1))
  assert 4 < step <= 8  # the save of step 8 waits for the one of step 4
  assert sealed(workdir) == sorted({4, 8, step} & set(range(step + 1)))  # 4 finished, not cut
  resume_and_compare(workdir, tiny_run, step)


@pytest.mark.slow
def test_a_second_signal_during_the_stop_save_leaves_at_once(tmp_path, tiny_run):
  workdir = tmp_path / "run"
  # The first Ctrl-C at step 6 starts its save; the second comes before that save is sealed.
  process = start(workdir, env={"BNN_JAX_TEST_HOLD": "step:6,seal:6"})
  _, stderr = signal_on(
    process, [("holding at step 6", signal.SIGINT), ("holding at seal 6", signal.SIGINT)]
  )
  assert_one_line(
    process,
    stderr,
    signal.SIGINT,
    "Stopped at once by a second Ctrl-C; the same command resumes from the last complete "
    "checkpoint (step 4).",
  )
  assert sealed(workdir) == [4]
  # The unsealed checkpoint of step 6 is set aside (kept, not used); the run resumes from 4.
  stderr = resume_and_compare(workdir, tiny_run, 4)
  assert "the checkpoint of step 6 is unreadable" in stderr
  assert list((workdir / "corrupt_checkpoints").iterdir())
