"""launch/sweep.py: a config's sweep() expanded into one command and workdir per point."""

import sys
import textwrap

import pytest

from launch import sweep

CONFIG = textwrap.dedent(
  """
  from configs import test

  def get_config():
    return test.get_config()

  def sweep():
    return [
      ("ste", {"binary.weight_estimator": "ste", "seed": 1}),
      {"model.width": 0.5, "data.fake_image_shape": (8, 8, 1)},
    ]
  """
)


def test_points_become_commands_with_their_own_workdirs(tmp_path):
  config = tmp_path / "swept.py"
  config.write_text(CONFIG)
  local = sweep.commands(str(config), "/runs", "local", ["--config.max_steps=2"])
  assert [name for name, _ in local] == ["ste", "width=0.5,fake_image_shape=_8,8,1_"]
  name, argv = local[0]
  assert argv[:3] == [sys.executable, "-m", "bnn_jax.main"]
  assert argv[3:] == [
    f"--config={config}",
    "--workdir=/runs/ste",
    "--config.binary.weight_estimator=ste",
    "--config.seed=1",
    "--config.max_steps=2",
  ]
  assert "--config.data.fake_image_shape=(8,8,1)" in local[1][1]
  slurm = sweep.commands(str(config), "/runs", "sbatch launch/slurm.sbatch", [], only=["ste"])
  assert slurm == [
    (
      "ste",
      ["sbatch", "launch/slurm.sbatch", str(config), "/runs/ste"]
      + ["--config.binary.weight_estimator=ste", "--config.seed=1"],
    )
  ]


def test_a_config_without_sweep_is_refused(tmp_path):
  config = tmp_path / "plain.py"
  config.write_text("def get_config():\n  return None\n")
  with pytest.raises(SystemExit, match="defines no sweep"):
    sweep.load_sweep(str(config))
