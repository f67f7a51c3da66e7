"""Checks a config before anything is built or compiled: one sentence per bad value."""

import numbers

import ml_collections

from bnn_jax import binary, layers, models, optim
from bnn_jax.data import DATASETS, in_memory
from bnn_jax.errors import InputError


def _choice(*allowed):
  return (lambda v: v in allowed, "one of " + ", ".join(repr(a) for a in allowed))


_POSITIVE = (lambda v: v > 0, "a number > 0")
_NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
_FRACTION = (lambda v: 0 <= v < 1, "a number in [0, 1)")
_ANY = (lambda v: True, "")


def _sizes(n: int, what: str):
  return (
    lambda v: len(v) == n and all(_type_ok(d, int) and d > 0 for d in v),
    f"{n} integers > 0 ({what})",
  )


_INCREASING_EPOCHS = (
  lambda v: all(_type_ok(e, float) and e >= 0 for e in v) and all(a < b for a, b in zip(v, v[1:])),
  "epochs >= 0 in increasing order, e.g. (100.0, 150.0)",
)

# dotted key -> (type, (predicate, what is allowed)): one line a key. Every key of every config
# file needs a rule here (tests/test_config_rules.py); a key of configs/base.py goes in _RULES.
_RULES = {
  "seed": (int, _ANY),
  "model.name": (str, _choice(*sorted(models.MODELS))),
  "model.binary": (bool, _ANY),
  "model.width": (float, _POSITIVE),
  "model.final_activation": (str, _choice("relu", "binary")),
  "model.binary_weights": (bool, _ANY),
  "binary.weight_estimator": (str, _choice(*binary.ESTIMATORS)),
  "binary.weight_scale": (str, _choice(*layers.WEIGHT_SCALES)),
  "binary.weight_scale_per": (str, _choice(*layers.SCALE_GRANULARITIES)),
  "binary.weight_scale_init": (str, _choice(*layers.SCALE_INITS)),
  "binary.activation_mode": (str, _choice(*binary.ACTIVATION_MODES)),
  "binary.activation_estimator": (str, _choice(*binary.ESTIMATORS)),
  "binary.activation_scale": (str, _choice(*layers.ACTIVATION_SCALES)),
  "binary.beta_init": (float, _POSITIVE),
  "data.name": (str, _choice(*DATASETS)),
  "data.path": (str, _ANY),
  "data.tfds_data_dir": (str, _ANY),
  "data.manual_dir": (str, _ANY),
  "data.augment": (str, _choice(*in_memory.AUGMENTATIONS)),
  "data.cutout": (int, _NON_NEGATIVE),
  "data.mixup_alpha": (float, _NON_NEGATIVE),
  "data.cutmix_alpha": (float, _NON_NEGATIVE),
  "data.train_subset": (int, _NON_NEGATIVE),
  "data.fake_image_shape": (tuple, _sizes(3, "height, width, channels")),
  "data.fake_num_classes": (int, _POSITIVE),
  "data.fake_train_size": (int, _POSITIVE),
  "data.fake_test_size": (int, _POSITIVE),
  "data.fake_seed": (int, _ANY),
  "optimizer.name": (str, _choice(*optim.OPTIMIZERS)),
  "optimizer.learning_rate": (float, _POSITIVE),
  "optimizer.b1": (float, _FRACTION),
  "optimizer.b2": (float, _FRACTION),
  "optimizer.eps": (float, _POSITIVE),
  "optimizer.momentum": (float, _FRACTION),
  "optimizer.nesterov": (bool, _ANY),
  "optimizer.schedule": (str, _choice(*optim.SCHEDULES)),
  "optimizer.warmup_epochs": (float, _NON_NEGATIVE),
  "optimizer.decay_epochs": (tuple, _INCREASING_EPOCHS),
  "optimizer.decay_factor": (float, _POSITIVE),
  "optimizer.weight_decay": (float, _NON_NEGATIVE),
  "optimizer.scale_l2": (float, _NON_NEGATIVE),
  "optimizer.scale_l2_mode": (str, _choice(*optim.SCALE_L2_MODES)),
  "optimizer.clip_latent_weights": (bool, _ANY),
  "optimizer.grad_clip_norm": (float, _NON_NEGATIVE),
  "optimizer.label_smoothing": (float, _FRACTION),
  "optimizer.latent_weight_decay": (float, _NON_NEGATIVE),
  "distill.teacher_workdir": (str, _ANY),
  "distill.weight": (float, (lambda v: 0 <= v <= 1, "a number in [0, 1]")),
  "distill.temperature": (float, _POSITIVE),
  "init.from_workdir": (str, _ANY),
  "init.stage1_epochs": (float, _NON_NEGATIVE),
  "batch_size": (int, _POSITIVE),
  "eval_batch_size": (int, _POSITIVE),
  "num_epochs": (float, _POSITIVE),
  "max_steps": (int, _NON_NEGATIVE),
  "compute_dtype": (str, _choice("float32", "bfloat16")),
  "grad_accum_steps": (int, _POSITIVE),
  "steps_per_call": (int, _POSITIVE),
  "log_every_steps": (int, _POSITIVE),
  "eval_every_epochs": (float, _POSITIVE),
  "checkpoint_every_steps": (int, _POSITIVE),
  "keep_checkpoints": (
    int,
    (
      lambda v: v >= 2,
      "an integer >= 2 (a corrupt latest checkpoint falls back to the one before)",
    ),
  ),
}


# Keys that only some configs have (ResNet switches; host-fed data in configs/imagenet_base.py):
# checked where present.
_OPTIONAL_RULES = {
  "model.shortcut": (str, _choice(*models.SHORTCUTS)),
  "model.downsample": (str, _choice(*models.DOWNSAMPLES)),
  "data.image_size": (int, _POSITIVE),
  "data.eval_resize": (int, _POSITIVE),
  "data.shuffle_buffer": (int, _POSITIVE),
  "data.num_threads": (int, _NON_NEGATIVE),
  "data.prefetch_batches": (int, _NON_NEGATIVE),
  "data.synthetic_image_shape": (tuple, _sizes(2, "height, width")),
  "data.synthetic_num_images": (int, _POSITIVE),
  "data.synthetic_num_classes": (int, _POSITIVE),
  "data.synthetic_train_size": (int, _POSITIVE),
  "data.synthetic_eval_size": (int, _POSITIVE),
}
_HOST_FED_KEYS = [k for k in _OPTIONAL_RULES if k.startswith("data.")]


def ruled_keys() -> set[str]:
  """The dotted config keys that have a rule here."""
  return set(_RULES) | set(_OPTIONAL_RULES)


_MISSING = object()


def _lookup(config, dotted):
  """config["a"]["b"] for "a.b", or _MISSING where a part is absent."""
  node = config
  for part in dotted.split("."):
    if part not in node:
      return _MISSING
    node = node[part]
  return node


def _get(config, dotted):
  value = _lookup(config, dotted)
  if value is _MISSING:
    raise InputError(f"config has no {dotted!r}; start experiment configs from configs/base.py")
  return value


def _type_ok(value, kind) -> bool:
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if kind is float:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
  if kind is tuple:  # a list where the config came from JSON
    return isinstance(value, tuple | list)
  return isinstance(value, kind)


def _has(config, dotted) -> bool:
  return _lookup(config, dotted) is not _MISSING


def _check_value(key, value, kind, predicate, allowed) -> None:
  if not _type_ok(value, kind):
    raise InputError(
      f"config.{key} = {value!r} has type {type(value).__name__}; it must be a {kind.__name__}"
      + (f", {allowed}" if allowed else "")
    )
  if not predicate(value):
    raise InputError(f"config.{key} = {value!r} is not allowed; it must be {allowed}")


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Raises InputError naming the first bad value of `config` and what is allowed."""
  for key, (kind, (predicate, allowed)) in _RULES.items():
    _check_value(key, _get(config, key), kind, predicate, allowed)
  for key, (kind, (predicate, allowed)) in _OPTIONAL_RULES.items():
    if _has(config, key):
      _check_value(key, _get(config, key), kind, predicate, allowed)
  models.check_model_options(config.model)
  if DATASETS[config.data.name].host_fed:
    _check_host_fed(config)
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % num_devices:
      raise InputError(
        f"config.{key} = {config[key]} must be a multiple of the number of devices "
        f"({num_devices}), so every device gets the same share of a batch"
      )
  if config.batch_size % (num_devices * config.grad_accum_steps):
    raise InputError(
      f"config.batch_size = {config.batch_size} must be a multiple of config.grad_accum_steps "
      f"({config.grad_accum_steps}) x the number of devices ({num_devices}), so every "
      f"microbatch is spread evenly over the devices"
    )
  if config.optimizer.warmup_epochs >= config.num_epochs:
    raise InputError(
      f"config.optimizer.warmup_epochs = {config.optimizer.warmup_epochs} must be less than "
      f"config.num_epochs = {config.num_epochs}"
    )
  if config.data.mixup_alpha and config.data.cutmix_alpha:
    raise InputError(
      f"config.data.mixup_alpha = {config.data.mixup_alpha} and config.data.cutmix_alpha = "
      f"{config.data.cutmix_alpha} are both > 0; at most one of them may be, the other 0"
    )
  if config.init.get("stage1_epochs", 0):
    _check_stage1(config)
  if config.data.name in ("npz", "mnist") and not config.data.path:
    raise InputError(f"config.data.name {config.data.name!r} needs config.data.path, a folder")


def _check_stage1(config) -> None:
  """init.stage1_epochs > 0 (two stages in one run) needs a fully binary model of its own."""
  stage1 = config.init.stage1_epochs
  if not (config.model.binary and config.model.binary_weights):
    raise InputError(
      f"config.init.stage1_epochs = {stage1} trains a binary network in two stages; it needs "
      f"config.model.binary = True and config.model.binary_weights = True (else set it to 0)"
    )
  if config.init.from_workdir:
    raise InputError(
      f"config.init.stage1_epochs = {stage1} starts stage 2 from its own stage 1; "
      f'config.init.from_workdir ({config.init.from_workdir}) must then be ""'
    )
  if config.optimizer.warmup_epochs >= stage1:
    raise InputError(
      f"config.optimizer.warmup_epochs = {config.optimizer.warmup_epochs} must be less than "
      f"config.init.stage1_epochs = {stage1} (stage 1 runs the same schedule over its epochs)"
    )


def _check_host_fed(config) -> None:
  for key in _HOST_FED_KEYS:
    if not _has(config, key):
      raise InputError(
        f"config.data.name {config.data.name!r} needs config.{key}; start ImageNet configs from "
        f"configs/imagenet_base.py"
      )
  data = config.data
  if config.steps_per_call != 1:
    raise InputError(
      f"config.steps_per_call = {config.steps_per_call} must be 1 for host-fed data "
      f"({data.name!r}), whose batches come from the hosts one step at a time"
    )
  if data.eval_resize < data.image_size:
    raise InputError(
      f"config.data.eval_resize = {data.eval_resize} must be at least config.data.image_size "
      f"= {data.image_size} (evaluation center-crops image_size from the resized image)"
    )
  for key in in_memory.SWITCHES:
    if data[key]:
      raise InputError(
        f"config.data.{key} = {data[key]} is not supported for host-fed data ({data.name!r}), "
        f"whose augmentation runs on the hosts; it must be 0"
      )
  if data.train_subset:
    raise InputError(
      f"config.data.train_subset = {data.train_subset} is not supported for "
      f"{data.name!r}; it must be 0"
    )


def check_against_data(config: ml_collections.ConfigDict, num_train: int) -> None:
  """Checks the values that depend on the dataset's size."""
  if config.batch_size > num_train:
    raise InputError(
      f"config.batch_size = {config.batch_size} is larger than the {num_train} training examples"
    )
  steps_per_epoch = num_train // config.batch_size
  if optim.steps_from_epochs(config.num_epochs, steps_per_epoch) < 1:
    raise InputError(
      f"config.num_epochs = {config.num_epochs} trains 0 steps ({num_train} training examples "
      f"at batch {config.batch_size} make {steps_per_epoch} steps an epoch); it must be at "
      f"least {1 / steps_per_epoch:.3g} (one step)"
    )
