"""End to end: main on the tiny config, resume, corrupt checkpoints, non-finite loss, devices."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bnn_jax import run, train
from bnn_jax.errors import InputError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_main(workdir, *overrides, devices=None):
  env = dict(os.environ)
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "bnn_jax.main",
      "--config=configs/test.py",
      f"--workdir={workdir}",
      *overrides,
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def logged_losses(workdir):
  return {
    r["step"]: r["train/loss"]
    for r in run.MetricsLog(pathlib.Path(workdir)).read()
    if "train/loss" in r
  }


def checkpoint_steps(workdir):
  return sorted(
    int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit()
  )


def test_main_stops_and_resumes_from_the_saved_step(tmp_path):
  first = run_main(tmp_path, "--config.max_steps=6")
  assert first.returncode == 0, first.stderr[-3000:]
  assert checkpoint_steps(tmp_path) == [4, 6]
  second = run_main(tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resumed from the checkpoint of step 6" in second.stderr
  steps = [r["step"] for r in run.MetricsLog(tmp_path).read() if "train/loss" in r]
  assert steps == list(range(1, 13))  # 1-6 in the first run, 7-12 after resuming: none twice
  assert checkpoint_steps(tmp_path) == [6, 8, 12]
  assert "final test accuracy" in second.stdout


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, test_config, tiny_run):
  test_config.max_steps = 6
  train.train_and_evaluate(test_config, tmp_path / "a")
  test_config.max_steps = 0
  resumed = train.train_and_evaluate(test_config, tmp_path / "a")
  config, straight_dir, straight = tiny_run  # the same config, trained straight through
  assert test_config.to_dict() == config.to_dict()
  assert resumed == straight
  a, b = logged_losses(tmp_path / "a"), logged_losses(straight_dir)
  np.testing.assert_allclose([a[s] for s in range(1, 13)], [b[s] for s in range(1, 13)], rtol=1e-6)


def test_corrupt_latest_checkpoint_falls_back_and_is_kept(tmp_path, test_config, capsys):
  test_config.max_steps = 8
  train.train_and_evaluate(test_config, tmp_path)
  assert checkpoint_steps(tmp_path) == [4, 8]
  for f in (tmp_path / "checkpoints" / "8").rglob("*"):
    if f.is_file():
      f.write_bytes(b"\x00garbage" * 7)
  test_config.max_steps = 0
  result = train.train_and_evaluate(test_config, tmp_path)
  assert "checkpoint of step 8 is unreadable" in capsys.readouterr().out
  moved = list((tmp_path / "corrupt_checkpoints").iterdir())
  assert len(moved) == 1 and moved[0].name.startswith("8-")  # kept for inspection, not deleted
  steps = [r["step"] for r in run.MetricsLog(tmp_path).read() if "train/loss" in r]
  # Resumed from step 4: the records of steps 5-8 of the first run were dropped, each step once.
  assert steps == list(range(1, 13))
  assert result["count"] == 40 and checkpoint_steps(tmp_path)[-1] == 12


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
  tmp_path, test_config
):
  test_config.model.binary = False
  test_config.optimizer.update(
    name="sgd", learning_rate=1.0, schedule="step", decay_epochs=(1.0,), decay_factor=1e30
  )  # lr 1e30 after step 4
  with pytest.raises(
    train.NonFiniteLossError,
    match=r"became (nan|inf) at step [5-8];.*last good checkpoint \(step 4\)",
  ):
    train.train_and_evaluate(test_config, tmp_path)
  assert checkpoint_steps(tmp_path) == [4]


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("model.name", "resnet9000", "config.model.name = 'resnet9000' is not allowed"),
    ("data.name", "cifar11", "config.data.name = 'cifar11' is not allowed; it must be one of"),
    ("binary.weight_estimator", "magic", "config.binary.weight_estimator = 'magic' is not"),
    ("batch_size", 0, "config.batch_size = 0 is not allowed; it must be a number > 0"),
    ("batch_size", "16", "config.batch_size = '16' has type str; it must be a int"),
    ("optimizer.learning_rate", -1.0, "config.optimizer.learning_rate = -1.0 is not allowed"),
    ("batch_size", 1000, "config.batch_size = 1000 is larger than the 64 training examples"),
    ("keep_checkpoints", 1, "config.keep_checkpoints = 1 is not allowed"),
  ],
)
def test_bad_config_values_fail_before_anything_is_built(
  tmp_path, test_config, key, value, message
):
  node = test_config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  with test_config.ignore_type():
    node[leaf] = value
  with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
    train.train_and_evaluate(test_config, tmp_path / "run")
  assert not (tmp_path / "run").exists()  # failed before creating, compiling or saving anything


def test_missing_data_folder_fails_before_anything_is_built(tmp_path, test_config):
  test_config.data.name = "fashion_mnist"
  test_config.data.path = str(tmp_path / "no-such-folder")
  with pytest.raises(InputError, match="no-such-folder' is not a folder"):
    train.train_and_evaluate(test_config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_workdir_of_another_experiment_is_refused_and_left_alone(tmp_path, test_config):
  test_config.max_steps = 4
  train.train_and_evaluate(test_config, tmp_path)
  test_config.model.width = 0.125
  with pytest.raises(InputError, match=r"holds a run of another experiment \(model.width"):
    train.train_and_evaluate(test_config, tmp_path)
  assert checkpoint_steps(tmp_path) == [4]


def test_main_prints_one_sentence_for_bad_input(tmp_path):
  result = run_main(tmp_path, "--config.binary.activation_mode=ternary")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
    "error: config.binary.activation_mode = 'ternary' is not allowed; it must be one of "
    "'step', 'sign'"
  )
  assert "Traceback" not in result.stderr


SHARDED_RUN = textwrap.dedent("""
    import json, sys
    import jax
    from configs import test
    from bnn_jax import train
    config = test.get_config()
    config.model.binary = sys.argv[2] == "binary"
    config.max_steps = 6
    train.train_and_evaluate(config, sys.argv[1])
    print(json.dumps({"devices": jax.device_count()}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("variant,compared_steps", [("float", 6), ("binary", 2)])
def test_one_and_four_devices_give_the_same_losses(tmp_path, variant, compared_steps):
  """Same global batch on 1 and 4 devices: the same losses within float tolerance.

  The float network is compared over all 6 steps. In the binary network, a pre-activation
  within float round-off of 0 flips its bit when a reduction runs in another order (BatchNorm
  statistics are all-reduced over 4 devices), and the trajectories then part after a few steps
  (seen at step 4 here): its first 2 steps are compared.
  """
  losses = {}
  for devices in (1, 4):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    workdir = tmp_path / str(devices)
    out = subprocess.run(
      [sys.executable, "-c", SHARDED_RUN, str(workdir), variant],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["devices"] == devices
    losses[devices] = logged_losses(workdir)
  assert sorted(losses[1]) == sorted(losses[4]) == list(range(1, 7))
  steps = range(1, compared_steps + 1)
  np.testing.assert_allclose(
    [losses[4][s] for s in steps], [losses[1][s] for s in steps], rtol=1e-4, atol=1e-5
  )
