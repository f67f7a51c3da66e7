"""Tests of the ablation runner (launch/ablation.py) and the ablation sweep's variants."""

import csv
import math
import pathlib

import numpy as np
import pytest

from bnn_jax import config_checks, data, run, train
from bnn_jax.data import in_memory
from bnn_jax.errors import InputError
from configs import ablation_fashion_mnist
from launch import ablation, sweep

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
SWEEP_FILE = str(CONFIGS / "ablation_fashion_mnist.py")
LAYERS = [f"alpha/conv{i}" for i in range(1, 6)] + [f"beta/act{i}" for i in range(1, 6)]


def test_every_variant_of_the_sweep_is_a_valid_config():
  base = ablation_fashion_mnist.get_config()
  variants = sweep.load_sweep(SWEEP_FILE)
  names = [name for name, _ in variants]
  assert names[:2] == ["float", "bnn"] and "paper" in names and "swish_sign" in names
  for name, overrides in variants:
    config = ablation.variant_config(base, overrides, seed=3)
    config_checks.check_config(config, num_devices=1)
    assert config.seed == 3, name
  paper = ablation.variant_config(base, dict(variants)["paper"], 0)
  assert paper.to_dict() == ablation.variant_config(base, {}, 0).to_dict()  # the base is the paper
  bnn = ablation.variant_config(base, dict(variants)["bnn"], 0)
  assert (bnn.binary.weight_scale, bnn.binary.activation_scale) == ("none", "none")
  assert (bnn.binary.weight_estimator, bnn.binary.activation_estimator) == ("ste", "ste")


def test_bad_overrides_and_variant_names_are_input_errors(test_config):
  with pytest.raises(InputError, match="binary.no_such_key"):
    ablation.variant_config(test_config, {"binary.no_such_key": 1}, 0)
  with pytest.raises(InputError, match="model.width.deeper"):
    ablation.variant_config(test_config, {"model.width.deeper": 1}, 0)
  with pytest.raises(InputError, match="nope"):
    sweep.select(sweep.load_sweep(SWEEP_FILE), ["bnn", "nope"])
  with pytest.raises(InputError, match="sweep"):
    sweep.load_sweep(str(CONFIGS / "test.py"))


def _read_csv(path):
  with path.open() as f:
    return list(csv.DictReader(f))


def _correct_of_final_checkpoint(workdir) -> int:
  """Test images the run's restored final model classifies right, counted here, not by train."""
  config, spec, model = run.restore_model(workdir)
  ds = in_memory.load(config.data)
  logits = model(data.normalize(ds.test_images, spec), train=False)
  return int(np.sum(np.argmax(logits, -1) == ds.test_labels))


@pytest.mark.slow  # 5 short trainings of 4 train steps (one per variant and seed): 75 s of CPU
def test_runner_writes_csv_and_plot_and_resumes(test_config, tmp_path, monkeypatch):
  test_config.num_epochs = 1.0  # 4 steps of 16 fake images
  test_config.checkpoint_every_steps = 2
  test_config.log_every_steps = 1
  variants = sweep.select(sweep.load_sweep(SWEEP_FILE), ["bnn", "paper"])
  seeds = [0, 1]
  # An interrupted run: (paper, seed 1) stopped after 2 of its 4 steps.
  interrupted = ablation.variant_config(test_config, dict(variants)["paper"], 1)
  interrupted.max_steps = 2
  train.train_and_evaluate(interrupted, str(ablation.run_dir(tmp_path, "paper", 1)))

  ablation.run_sweep(test_config, variants, seeds, tmp_path)
  rows = _read_csv(tmp_path / ablation.CSV_FILE)
  assert list(rows[0])[: len(ablation._LEADING_COLUMNS)] == list(ablation._LEADING_COLUMNS)
  assert sorted(list(rows[0])[len(ablation._LEADING_COLUMNS) :]) == sorted(LAYERS)
  assert [(r["variant"], int(r["seed"])) for r in rows] == [
    ("bnn", 0),
    ("bnn", 1),
    ("paper", 0),
    ("paper", 1),
  ]
  for r in rows:
    assert r["status"] == "done"
    workdir = ablation.run_dir(tmp_path, r["variant"], int(r["seed"]))
    # The row's accuracy is its own run's: the final eval it logged, and the share of the test
    # images its final checkpoint classifies right.
    final_eval = [m for m in run.MetricsLog(workdir).read() if "eval/accuracy" in m][-1]
    assert (final_eval["step"], float(r["test_accuracy"])) == (4, final_eval["eval/accuracy"])
    count = test_config.data.fake_test_size
    assert int(r["test_count"]) == count
    assert round(float(r["test_accuracy"]) * count) == _correct_of_final_checkpoint(workdir)
    assert int(r["steps"]) == 4
    expected_start = 2 if (r["variant"], r["seed"]) == ("paper", "1") else 0
    assert int(r["resumed_from_step"]) == expected_start
    if r["variant"] == "bnn":  # no scales at all
      assert all(r[c] == "" for c in LAYERS + ["alpha_mean_final", "beta_mean_final"])
    else:
      values = [float(r[c]) for c in LAYERS]
      assert all(math.isfinite(v) and v > 0 for v in values)
      # alpha starts at mean |W| of a lecun-normal kernel (well below 1), beta at 1.
      assert 0 < float(r["alpha_mean_first_logged"]) < 0.5
      assert float(r["beta_mean_first_logged"]) == pytest.approx(1.0, abs=0.05)
  assert (tmp_path / ablation.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "| paper |" in (tmp_path / ablation.SUMMARY_FILE).read_text()

  # A second invocation trains nothing and writes the same table.
  before = (tmp_path / ablation.CSV_FILE).read_text()

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")

  monkeypatch.setattr(train, "train_and_evaluate", no_training)
  ablation.run_sweep(test_config, variants, seeds, tmp_path)
  assert (tmp_path / ablation.CSV_FILE).read_text() == before

  # The same output folder with another experiment's config is refused, not mixed in.
  test_config.optimizer.learning_rate = 0.5
  with pytest.raises(InputError, match="another config"):
    ablation.run_sweep(test_config, variants, seeds, tmp_path)
