"""launch/sweep.py: a config's sweep() expanded into one command and workdir per point."""

import sys
import textwrap

import pytest

from bnn_jax.errors import InputError
from configs import test
from launch import sweep

CONFIG = textwrap.dedent(
  """
  from configs import test

  def get_config():
    return test.get_config()

  def sweep():
    return [
      ("ste", {"binary.weight_estimator": "ste", "seed": 1}),
      ("narrow_gray", {"model.width": 0.5, "data.fake_image_shape": (8, 8, 1)}),
    ]
  """
)


def test_points_become_commands_with_their_own_workdirs(tmp_path):
  config = tmp_path / "swept.py"
  config.write_text(CONFIG)
  local = sweep.commands(str(config), "/runs", "local", ["--config.max_steps=2"])
  assert [name for name, _ in local] == ["ste", "narrow_gray"]
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
  with pytest.raises(InputError, match="'nope' names no point of sweep"):
    sweep.commands(str(config), "/runs", "print", [], only=["ste", "nope"])


def test_points_apply_on_top_of_the_config():
  config = sweep.apply(test.get_config(), {"model.width": 0.5, "data.fake_image_shape": (8, 8, 1)})
  assert (config.model.width, config.data.fake_image_shape) == (0.5, (8, 8, 1))
  assert test.get_config().model.width == 1 / 16  # a copy: the base is unchanged
  with pytest.raises(InputError, match="override 'model.depth' names no config key"):
    sweep.apply(test.get_config(), {"model.depth": 3})


@pytest.mark.parametrize(
  "body,message",
  [
    ("def get_config():\n  return None\n", "defines no sweep"),
    ("def sweep():\n  return [{'seed': 1}]\n", r"returns \{'seed': 1\}; each point must be a pair"),
    ("def sweep():\n  return [('a', {}), ('a', {'seed': 1})]\n", "repeats a point name"),
  ],
  ids=["no_sweep", "not_a_pair", "repeated_name"],
)
def test_a_sweep_not_in_the_format_is_refused(tmp_path, body, message):
  config = tmp_path / "plain.py"
  config.write_text(body)
  with pytest.raises(InputError, match=message):
    sweep.load_sweep(str(config))
