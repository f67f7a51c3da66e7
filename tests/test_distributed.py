"""Multi-process runs: jax.distributed detection, and 2 processes x 2 CPU devices training."""

import json
import pathlib
import re
import time

import numpy as np
import pytest

from bnn_jax import checkpointing, distributed
from bnn_jax.errors import InputError
from launch import local_processes

ROOT = pathlib.Path(__file__).resolve().parents[1]

# ResNet-18 shrunk by overrides, on synthetic ImageNet-like JPEGs: 8 steps an epoch.
SHRUNK_RESNET18 = [
  "--config=configs/resnet18_imagenet.py",
  "--config.data.name=imagenet_synthetic",
  "--config.model.width=0.0625",
  "--config.data.image_size=32",
  "--config.data.eval_resize=36",
  "--config.data.synthetic_image_shape=(40,48)",
  "--config.data.synthetic_num_images=16",
  "--config.data.synthetic_num_classes=10",
  "--config.data.synthetic_train_size=64",
  "--config.data.synthetic_eval_size=20",
  "--config.batch_size=8",
  "--config.eval_batch_size=8",
  "--config.num_epochs=100",  # the schedule; every run stops earlier
  "--config.optimizer.warmup_epochs=0",
  "--config.log_every_steps=1",
  "--config.checkpoint_every_steps=2",
]
STEPS = 8


@pytest.mark.parametrize(
  "env, expected",
  [
    ({}, None),
    ({"SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "n1"}, None),  # one task: no cluster
    ({"SLURM_NTASKS": "8", "SLURM_STEP_NODELIST": "n[1-2]"}, "slurm"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "open mpi"),
    ({"TPU_WORKER_HOSTNAMES": "t-0,t-1"}, "tpu pod"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),  # a single TPU VM
  ],
)
def test_cluster_detection(env, expected):
  assert distributed.detected_cluster(env) == expected


def test_single_process_runs_start_nothing_and_bad_flags_are_refused(monkeypatch):
  for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.initialize("auto") is False
  assert distributed.initialize("off", "127.0.0.1:1", 2, 0) is False
  with pytest.raises(InputError, match="go together"):
    distributed.initialize("auto", "127.0.0.1:1234", None, 0)
  with pytest.raises(InputError, match="--process_id=2 must be in"):
    distributed.initialize("auto", "127.0.0.1:1234", 2, 2)


def _records(workdir: pathlib.Path) -> list[dict]:
  """metrics.jsonl; a line cut by a killed process is skipped."""
  out = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  return out


def _losses(workdir: pathlib.Path) -> dict[int, float]:
  return {r["step"]: r["train/loss"] for r in _records(workdir) if "train/loss" in r}


def _checkpoints(workdir: pathlib.Path) -> list[int]:
  """Steps of the sealed checkpoints (a folder without its manifest is not resumed from)."""
  folder = workdir / "checkpoints"
  return (
    sorted(
      int(p.name)
      for p in folder.iterdir()
      if p.name.isdigit() and (p / checkpointing.MANIFEST).exists()
    )
    if folder.exists()
    else []
  )


def _run(processes, devices, workdir, logs, *extra, timeout=900):
  started = local_processes.start(
    processes, devices, [*SHRUNK_RESNET18, f"--workdir={workdir}", *extra], logs, all_to_logs=True
  )
  assert local_processes.wait(started, timeout) == 0, _tail(logs)
  return [(logs / f"process_{i}.log").read_text() for i in range(processes)]


def _tail(logs: pathlib.Path) -> str:
  return "\n".join(p.read_text()[-3000:] for p in sorted(logs.glob("process_*.log")))


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_after_being_killed(tmp_path):
  # Reference: 1 process with 4 devices, the same global batch of 8.
  reference = tmp_path / "one_process"
  _run(1, 4, reference, tmp_path / "logs_reference", f"--config.max_steps={STEPS}")
  expected = _losses(reference)
  assert sorted(expected) == list(range(1, STEPS + 1))

  # 2 processes x 2 devices, killed (SIGKILL, like a lost node) once a checkpoint of step 4
  # or later is on disk.
  workdir, logs = tmp_path / "two_processes", tmp_path / "logs_killed"
  processes = local_processes.start(
    2, 2, [*SHRUNK_RESNET18, f"--workdir={workdir}"], logs, all_to_logs=True
  )
  deadline = time.time() + 900
  while not any(s >= 4 for s in _checkpoints(workdir)):
    assert all(p.poll() is None for p in processes), _tail(logs)
    assert time.time() < deadline, _tail(logs)
    time.sleep(0.2)
  for p in processes:
    p.kill()
  for p in processes:
    p.wait()
  killed_at = max(_checkpoints(workdir))
  assert killed_at < 800  # it was stopped mid-run

  # The same command again resumes from the checkpoint, on both processes.
  logs_0, logs_1 = _run(2, 2, workdir, tmp_path / "logs_resumed", f"--config.max_steps={STEPS}")
  resumed = re.search(r"Resumed from the checkpoint of step (\d+)", logs_0)
  assert resumed and int(resumed.group(1)) >= 4, logs_0[-3000:]
  assert "final test accuracy" in logs_0 and "(20 examples)" in logs_0  # each image once
  # Logs come from process 0 only.
  assert re.search(r"step \d+/\d+: loss", logs_0) and not re.search(r"step \d+/\d+: loss", logs_1)
  assert "final test accuracy" not in logs_1

  got = _losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  np.testing.assert_allclose(
    [got[s] for s in range(1, STEPS + 1)], [expected[s] for s in range(1, STEPS + 1)], rtol=1e-4
  )
  evals = [r for r in _records(workdir) if "eval/count" in r]
  assert evals and all(r["eval/count"] == 20 for r in evals)
  assert (workdir / "config.json").exists()
