"""Starting a run from another finished run: its teacher, or its weights (config.init)."""

import pathlib

import jax
import numpy as np

from bnn_jax import layers
from bnn_jax.data import DataSpec
from bnn_jax.data.in_memory import SWITCHES
from bnn_jax.errors import InputError
from bnn_jax.run import (
  RUN_CONTROL_KEYS,
  flatten_config,
  has_checkpoint,
  load_run,
  replicated,
  restore_state,
  stop_step,
)


def _data_differences(config, spec: DataSpec, source, source_spec: DataSpec) -> list[str]:
  """What differs between two runs' data: config.data keys and DataSpec.

  Augmentation (data.augment, and the switches cutout, mixup_alpha, cutmix_alpha) is not a
  difference: a student may augment otherwise than its teacher or its stage 1.
  """
  flat, saved = flatten_config(config.data, "data."), flatten_config(source.data, "data.")
  augmentation = {"data.augment", *(f"data.{k}" for k in SWITCHES)}
  out = [
    f"{k}: {saved.get(k)!r} there, {flat.get(k)!r} here"
    for k in sorted((set(flat) | set(saved)) - set(RUN_CONTROL_KEYS) - augmentation)
    if flat.get(k) != saved.get(k)
  ]
  if not out and source_spec != spec:
    out.append(
      f"{source_spec.num_classes} classes of {source_spec.image_shape} there, "
      f"{spec.num_classes} of {spec.image_shape} here"
    )
  return out


def open_source_run(key: str, config, spec: DataSpec, num_train: int):
  """The finished run that config's `key` names (a teacher, a stage 1), restored on one device.

  Returns restore_state's (config, spec, graphdef, state). The run must have been trained on
  this run's data (the same config.data but augmentation, the same DataSpec) and have reached
  its last step; otherwise InputError, one sentence naming the key and the folder.
  """
  group, name = key.split(".")
  path = pathlib.Path(config[group][name])
  what = f"config.{key} = {str(path)!r}"
  if not path.is_dir():
    raise InputError(f"{what} is not a folder; train that run first")
  try:
    source_config, source_spec = load_run(path)
  except InputError as e:
    raise InputError(f"{what} is not a readable bnn_jax workdir ({e.__cause__ or e})") from e
  differ = _data_differences(config, spec, source_config, source_spec)
  if differ:
    raise InputError(
      f"{what} holds a run on other data ({'; '.join(differ[:3])}); it must be trained on this "
      f"run's data"
    )
  if not has_checkpoint(path):
    raise InputError(f"{what} holds no checkpoint; train that run first")
  restored = restore_state(path)
  step, stop = int(jax.device_get(restored[3]["step"])), stop_step(source_config, num_train)
  if step < stop:
    raise InputError(
      f"{what} holds an unfinished run (step {step} of {stop}); finish it first (rerun its "
      f"command with the same --workdir)"
    )
  return restored


def _variables(tree):
  """(paths as tuples of names, the nnx.Variables, treedef) of a tree of variables."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=layers.is_variable)
  names = [tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in p) for p, _ in leaves]
  return names, [v for _, v in leaves], treedef


def copy_matching(target, source) -> tuple[object, list[tuple[str, ...]]]:
  """(`target` with each variable's value replaced by `source`'s at the same path where the
  shapes match, the copied paths). Both are trees of nnx.Variables; the types stay target's."""
  found = dict(zip(*_variables(source)[:2]))
  names, variables, treedef = _variables(target)
  out, copied = [], []
  for name, var in zip(names, variables):
    other = found.get(name)
    if other is not None and other[...].shape == var[...].shape:
      var = var.replace(np.asarray(jax.device_get(other[...])).astype(var[...].dtype))
      copied.append(name)
    out.append(var)
  return jax.tree_util.tree_unflatten(treedef, out), copied


def fresh_scales(params, copied: list[tuple[str, ...]]):
  """`params` with each weight scale alpha that was not copied, but whose kernel was, set to
  mean |W| of that copied kernel, as a fresh model with weight_scale_init "mean_abs" sets
  alpha from its own kernel: over every axis but the last where alpha has one value per
  output channel (shape [out]), over all where it has one value (shape [])."""
  names, variables, treedef = _variables(params)
  kernels = {name[:-1]: var for name, var in zip(names, variables) if name[-1] == "kernel"}
  out = []
  for name, var in zip(names, variables):
    kernel = (*name[:-1], "kernel")
    if isinstance(var, layers.WeightScale) and name not in copied and kernel in copied:
      w = np.abs(np.asarray(jax.device_get(kernels[name[:-1]][...])))
      axes = tuple(range(w.ndim - 1)) if var[...].ndim == 1 else None
      var = var.replace(np.mean(w, axis=axes).astype(var[...].dtype))
    out.append(var)
  return jax.tree_util.tree_unflatten(treedef, out)


def init_from_run(state: dict, source_state: dict, weight_scale_init: str, mesh):
  """`state` with another run's parameters and BatchNorm statistics (config.init.from_workdir).

  Every variable of source_state whose path and shape match is copied. Weight scales alpha
  absent from the source start as in a fresh model: mean |W| of the COPIED kernel when
  weight_scale_init is "mean_abs" (fresh_scales), else their fresh value. The step and the
  optimizer state stay `state`'s (a fresh start). Returns (the state, params and statistics
  replicated over mesh; the copied paths; the paths not copied). InputError where no
  parameter matches.
  """
  params, copied = copy_matching(state["params"], source_state["params"])
  rest, copied_rest = copy_matching(state["rest"], source_state["rest"])
  if not copied:
    raise InputError(
      "config.init.from_workdir holds a model that shares no parameter (path and shape) with "
      "this one; it must be a run of the same model"
    )
  if weight_scale_init == "mean_abs":
    params = fresh_scales(params, copied)
  every = _variables(params)[0] + _variables(rest)[0]
  fresh = [name for name in every if name not in set(copied + copied_rest)]
  state = {**state, "params": replicated(params, mesh), "rest": replicated(rest, mesh)}
  return state, copied + copied_rest, fresh
