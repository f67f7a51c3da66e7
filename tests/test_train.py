"""End to end: main on the tiny config, resume, corrupt checkpoints, non-finite loss, devices."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bnn_jax import progress, run, train
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


@pytest.mark.slow  # two runs through main in new processes
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


@pytest.mark.slow  # a run of 8 steps with checkpoints
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
  tmp_path, test_config
):
  test_config.model.binary = False
  test_config.optimizer.update(
    name="sgd", learning_rate=1.0, schedule="step", decay_epochs=(1.0,), decay_factor=1e30
  )  # lr 1e30 after step 4
  with pytest.raises(
    progress.NonFiniteLossError,
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
    import json, pathlib, shutil, sys
    import jax
    from configs import test
    from bnn_jax import train
    workdir, variant, source = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    config = test.get_config()  # data.augment = "crop_flip", the default
    config.model.binary = variant == "binary"
    config.checkpoint_every_steps = 1  # every state kept (for replays), metrics logged every step
    config.keep_checkpoints = 7
    if not source:  # a free run of 6 steps
      config.max_steps = 6
      train.train_and_evaluate(config, workdir)
    else:  # replay: step s + 1 from the state that the run in `source` saved at step s
      for step in range(6):
        run = workdir / str(step)
        if step:
          shutil.copytree(
            pathlib.Path(source[0], "checkpoints", str(step)), run / "checkpoints" / str(step)
          )
        config.max_steps = step + 1
        train.train_and_evaluate(config, run)
    print(json.dumps({"devices": jax.device_count()}))
""")


def run_sharded(devices: int, cache, *args) -> None:
  """SHARDED_RUN with `args` in a process with `devices` CPU devices; compilations cached."""
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_COMPILATION_CACHE_DIR=str(cache),  # the replays compile the same steps 6 times
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
  )
  out = subprocess.run(
    [sys.executable, "-c", SHARDED_RUN, *map(str, args)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.strip().splitlines()[-1])["devices"] == devices


def logged(workdir, key: str) -> dict[int, float]:
  """{step: value} of metric `key` in a workdir's metrics.jsonl."""
  rows = run.MetricsLog(pathlib.Path(workdir)).read()
  return {r["step"]: r[key] for r in rows if key in r}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["float", "binary"])
def test_one_and_four_devices_give_the_same_losses(tmp_path, variant):
  """Same global batch (crop_flip augmentation) on 1 and 4 devices: the same numbers.

  Each of the 6 steps is replayed on 4 devices from the 1-device run's state before it: its
  loss and gradient norm agree with the 1-device run's within float round-off (measured: at
  most 2e-7 and 2e-6 relative). The float network's free-running trajectories agree over all 6
  steps too (3e-7). The binary network's cannot, and no tolerance would mean anything: 4
  devices sum the BatchNorm statistics and the weight gradients over the batch in another
  order (kernel gradients ~1e-6 apart relative; the alpha and beta gradients, nearly 0 under
  BatchNorm, 1e-3 to 5e-1), and the binary net amplifies that round-off. (1) BatchNorm makes a
  channel's cotangents sum to 0 over the batch, so a weight whose input is the same at every
  position routed to it has a gradient of exactly 0, computed as round-off (~1e-9), that
  Adam's g / (|g| + 1e-8) turns into a step of up to ~0.2 learning rates. (2) Binary conv
  outputs are integer multiples of alpha * beta: ~10 % of the max-pool windows hold a tie or a
  round-off near-tie, and once the parameters differ, round-off decides which element takes
  the whole cotangent. (3) Latent weights and pre-activations near 0 then flip their bits.
  Measured: losses 2 % apart at step 4 and 16 % at step 6; as much with augment "none" and
  with max-pools that split ties equally.
  """
  cache = tmp_path / "jax_cache"
  run_sharded(1, cache, tmp_path / "1", variant)
  run_sharded(4, cache, tmp_path / "replay", variant, tmp_path / "1")
  steps = list(range(1, 7))
  for key in ("train/loss", "train_mean/grad_norm"):
    one = logged(tmp_path / "1", key)
    replayed = {s + 1: logged(tmp_path / "replay" / str(s), key)[s + 1] for s in range(6)}
    assert sorted(one) == steps, key
    np.testing.assert_allclose(
      [replayed[s] for s in steps], [one[s] for s in steps], rtol=1e-5, err_msg=key
    )
  if variant == "float":
    run_sharded(4, cache, tmp_path / "4", variant)
    one, four = logged(tmp_path / "1", "train/loss"), logged(tmp_path / "4", "train/loss")
    assert sorted(four) == steps
    np.testing.assert_allclose([four[s] for s in steps], [one[s] for s in steps], rtol=1e-5)


# ----------------------------------------------------------------------------- steps_per_call


def test_call_plan_runs_full_calls_and_lands_on_every_boundary():
  # periods: log 6, eval 12, checkpoint 6 (the test below); calls of 5 steps where they fit.
  assert list(train.call_plan(0, 12, (6, 12, 6), 5)) == [(5, 5), (1, 6), (5, 11), (1, 12)]
  assert list(train.call_plan(3, 10, (4,), 10)) == [(1, 4), (4, 8), (2, 10)]
  assert list(train.call_plan(0, 3, (100,), 1)) == [(1, 1), (1, 2), (1, 3)]
  assert list(train.call_plan(7, 7, (2,), 4)) == []


@pytest.mark.slow  # three short runs
def test_steps_per_call_repeats_exactly_across_a_resume_and_agrees_with_single_steps(
  tmp_path, test_config, monkeypatch
):
  """5-step calls (one crosses an epoch's end): a run stopped and resumed gives the bits of an
  uninterrupted one, and the losses of 1-step calls to float round-off (XLA compiles a step in
  a loop a little differently from a step alone; the float net keeps round-off small, the
  binary net would amplify it as in the 1-vs-4-device test)."""
  from bnn_jax.data import in_memory

  calls = []
  make_step = in_memory.InMemoryFeed.train_step

  def counting_train_step(self, update, first_step, teacher=None, steps_per_call=1):
    step = make_step(self, update, first_step, teacher, steps_per_call)
    return lambda state, steps=1: calls.append(steps) or step(state, steps)

  monkeypatch.setattr(in_memory.InMemoryFeed, "train_step", counting_train_step)
  test_config.model.binary = False
  # 4 steps an epoch, 12 in all; boundaries every 6 steps (log, checkpoint) and at 12 (eval).
  test_config.update(log_every_steps=6, checkpoint_every_steps=6, eval_every_epochs=3.0)
  test_config.update(steps_per_call=5, max_steps=6)
  train.train_and_evaluate(test_config, tmp_path / "resumed")
  test_config.max_steps = 0
  resumed = train.train_and_evaluate(test_config, tmp_path / "resumed")
  assert calls == [5, 1, 5, 1]  # steps 1-5 (epoch 1 ends after step 4), 6 | resumed: 7-11, 12
  straight = train.train_and_evaluate(test_config, tmp_path / "straight")
  assert calls[4:] == [5, 1, 5, 1]
  assert resumed == straight
  five = logged_losses(tmp_path / "resumed")
  assert five == logged_losses(tmp_path / "straight") and sorted(five) == list(range(1, 13))
  test_config.steps_per_call = 1
  single = train.train_and_evaluate(test_config, tmp_path / "one")
  assert calls[8:] == [1] * 12
  one = logged_losses(tmp_path / "one")
  np.testing.assert_allclose(
    [five[s] for s in range(1, 13)], [one[s] for s in range(1, 13)], rtol=1e-5
  )
  assert single["loss"] == pytest.approx(straight["loss"], rel=1e-5)


@pytest.mark.slow  # two short runs
def test_steps_per_call_binary_net_starts_as_single_steps(tmp_path, test_config):
  """The binary net: the first step's loss agrees with 1-step calls to float round-off (same
  parameters, same batch; measured equal); later steps may drift apart, since a binary net
  turns round-off into flipped signs (configs/base.py says so), so they are not compared."""
  assert test_config.model.binary
  test_config.update(log_every_steps=4, eval_every_epochs=3.0, max_steps=4)  # one 4-step call
  losses = {}
  for k in (1, 4):
    test_config.steps_per_call = k
    train.train_and_evaluate(test_config, tmp_path / str(k))
    losses[k] = logged_losses(tmp_path / str(k))
    assert sorted(losses[k]) == [1, 2, 3, 4]
  assert losses[4][1] == pytest.approx(losses[1][1], rel=1e-5)


def test_steps_per_call_is_checked(test_config):
  from bnn_jax import config_checks
  from configs import resnet18_imagenet

  test_config.steps_per_call = 0
  with pytest.raises(InputError, match="config.steps_per_call = 0 is not allowed; it must be a"):
    config_checks.check_config(test_config, 1)
  host_fed = resnet18_imagenet.get_config()
  host_fed.data.name, host_fed.steps_per_call = "imagenet_synthetic", 4
  with pytest.raises(
    InputError,
    match=r"steps_per_call = 4 must be 1 for host-fed data \('imagenet_synthetic'\), whose",
  ):
    config_checks.check_config(host_fed, 1)
