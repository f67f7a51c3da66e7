"""Every config key has one validation rule (bnn_jax/config_checks.py), in every config file."""

import importlib.util
import re

import pytest

from bnn_jax import config_checks, run
from bnn_jax.errors import InputError
from configs import base
from launch import sweep
from tests.conftest import ROOT

CONFIG_FILES = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py")

# Keys that need no rule, each with the reason. None today: a new key gets a rule (one line in
# config_checks._RULES or _OPTIONAL_RULES); list it here only if no value of it can be wrong.
EXEMPT: dict[str, str] = {}


def _configs_of(path):
  """(label, config) for the file's get_config() and every point of its sweep()."""
  spec = importlib.util.spec_from_file_location(f"_rules_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  # Files that take an argument (--config=FILE:ARG) name its values in CONFIG_ARGUMENTS.
  args = getattr(module, "CONFIG_ARGUMENTS", (None,))
  configs = [module.get_config() if a is None else module.get_config(a) for a in args]
  if path.stem == "mnist":  # its folder is required (no default), not part of the recipe
    configs[0].data.path = "/path/to/mnist"
  config = configs[0]
  out = [(f"{path.name} get_config({a or ''})", c) for a, c in zip(args, configs)]
  if hasattr(module, "sweep"):
    for name, overrides in sweep.load_sweep(str(path)):
      out.append((f"{path.name} sweep point {name!r}", sweep.apply(config, overrides)))
  return out


def test_the_config_files_are_found():
  names = {p.name for p in CONFIG_FILES}
  assert {
    "base.py",
    "imagenet_base.py",
    "resnet18_imagenet.py",
    "ablation_fashion_mnist.py",
  } <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_key_of_every_config_has_a_rule_and_passes_it(path):
  for label, config in _configs_of(path):
    keys = set(run.flatten_config(config))
    unruled = sorted(keys - config_checks.ruled_keys() - set(EXEMPT))
    assert not unruled, f"{label}: no rule in bnn_jax/config_checks.py for {unruled}"
    config_checks.check_config(config, num_devices=1)  # the shipped values pass their rules


def test_every_rule_and_exemption_is_of_a_key_some_config_has():
  keys = set()
  for path in CONFIG_FILES:
    for _, config in _configs_of(path):
      keys |= set(run.flatten_config(config))
  assert not config_checks.ruled_keys() - keys, "rules of keys no config file has"
  assert not set(EXEMPT) - keys, "exemptions of keys no config file has"
  assert not set(EXEMPT) & config_checks.ruled_keys(), "keys both ruled and exempt"


@pytest.mark.parametrize(
  "key,value,message",
  [
    (
      "optimizer.nesterov",
      "yes",
      "config.optimizer.nesterov = 'yes' has type str; it must be a bool",
    ),
    (
      "optimizer.decay_epochs",
      (150.0, 100.0),
      r"config.optimizer.decay_epochs = \(150.0, 100.0\) is not allowed; it must be epochs >= 0 "
      r"in increasing order",
    ),
    (
      "data.fake_image_shape",
      (8, 8),
      r"config.data.fake_image_shape = \(8, 8\) is not allowed; it must be 3 integers > 0",
    ),
    ("data.manual_dir", 3, "config.data.manual_dir = 3 has type int; it must be a str"),
    (
      "data.fake_test_size",
      0,
      "config.data.fake_test_size = 0 is not allowed; it must be a number",
    ),
  ],
  ids=["nesterov", "decay_epochs", "fake_image_shape", "manual_dir", "fake_test_size"],
)
def test_a_bad_value_of_a_formerly_unruled_key_is_refused_in_one_sentence(key, value, message):
  config = base.get_config()
  section, leaf = key.split(".")
  with config.ignore_type():  # ConfigDict refuses a change of type itself; code may not
    config[section][leaf] = value
  with pytest.raises(InputError, match=f"^{message}") as caught:
    config_checks.check_config(config, num_devices=1)
  text = str(caught.value)
  assert "\n" not in text and not re.search(r"\. [A-Z]", text), "one sentence"
