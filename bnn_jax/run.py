"""A run folder (workdir): its config, data spec and metrics, and the model restored from it.

Training writes a run; export, inference, ablations, benchmarks and notebooks read one, through
this module and never through the training loop. A workdir holds:

  config.json        the flattened config (a resumed run must be the same experiment)
  data_spec.json     the DataSpec: classes, image shape, normalization, class names
  metrics.jsonl      one JSON object a line: {"step": N, "train/loss": ..., ...}
  events.out.*       the same scalars for TensorBoard (when the tensorboard package is present)
  checkpoints/N/     orbax checkpoints (bnn_jax.checkpointing)

The train state is a plain pytree {step, params, rest, opt_state}: `params` are the model's
nnx.Param variables (latent weights, scales, float kernels, BatchNorm affine terms), `rest` the
other variables (BatchNorm statistics).
"""

import contextlib
import dataclasses
import json
import math
import pathlib
import sys
import time
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bnn_jax import checkpointing, distributed, models, optim
from bnn_jax.data import DataSpec
from bnn_jax.errors import InputError

# Config keys a resumed run may change; any other difference means another experiment.
RUN_CONTROL_KEYS = (
  "max_steps",
  "log_every_steps",
  "eval_every_epochs",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "data.path",
  "data.tfds_data_dir",
  "data.manual_dir",
  "data.num_threads",
  "data.prefetch_batches",
  "grad_accum_steps",
  "steps_per_call",
)

# Keys added after runs were already saved, with the value that their absence means (today's
# behaviour): a run saved before a key existed reads, resumes and restores as before.
ADDED_KEYS = {
  "model.binary_weights": True,
  "optimizer.label_smoothing": 0.0,
  "optimizer.latent_weight_decay": 0.0,
  "distill.teacher_workdir": "",
  "distill.weight": 0.9,
  "distill.temperature": 4.0,
  "init.from_workdir": "",
  "init.stage1_epochs": 0.0,
  "steps_per_call": 1,
  "data.cutout": 0,
  "data.mixup_alpha": 0.0,
  "data.cutmix_alpha": 0.0,
}


# ----------------------------------------------------------------------------- config


def flatten_config(config: ml_collections.ConfigDict, prefix="") -> dict:
  """{"model.width": 0.25, ...}: JSON-ready (tuples become lists)."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten_config(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def unflatten_config(flat: dict) -> ml_collections.ConfigDict:
  """The inverse of flatten_config."""
  config = ml_collections.ConfigDict()
  for key, value in flat.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      if p not in node:
        node[p] = ml_collections.ConfigDict()
      node = node[p]
    node[leaf] = tuple(value) if isinstance(value, list) else value
  return config


def config_differences(config: ml_collections.ConfigDict, saved_flat: dict) -> list[str]:
  """Keys (outside RUN_CONTROL_KEYS) whose values differ, as "key: saved -> new" strings."""
  flat = flatten_config(config)
  keys = sorted(
    k
    for k in set(flat) | set(saved_flat)
    if k not in RUN_CONTROL_KEYS and flat.get(k) != saved_flat.get(k)
  )
  return [f"{k}: {saved_flat.get(k)!r} -> {flat.get(k)!r}" for k in keys]


def read_config(workdir: pathlib.Path) -> dict | None:
  """The flattened config.json of a workdir, or None where there is none."""
  config_file = workdir / "config.json"
  if not config_file.exists():
    return None
  try:
    return ADDED_KEYS | json.loads(config_file.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(f"{config_file} is unreadable ({e}); fix it or use a new workdir") from e


def prepare_workdir(workdir: pathlib.Path, config, spec: DataSpec) -> None:
  """Writes config.json and data_spec.json, or checks that a resumed run is the same experiment."""
  saved = read_config(workdir)
  if saved is not None:
    differ = config_differences(config, saved)
    if differ:
      raise InputError(
        f"workdir {workdir} holds a run of another experiment ({', '.join(differ[:5])}); "
        f"resume it with the same config or choose a new --workdir"
      )
  distributed.sync_processes("bnn_jax.prepare_workdir")  # every process has read config.json
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(
      json.dumps(flatten_config(config), indent=2, sort_keys=True)
    )
    (workdir / "data_spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2))


@contextlib.contextmanager
def locked(workdir: pathlib.Path):
  """An exclusive lock on workdir while the block runs (held by process 0 of a run).

  A second run on the same workdir is refused in one sentence. The lock is the kernel's
  (flock): it ends with the process that held it, so a killed run leaves no stale lock.
  """
  if jax.process_index() != 0:
    yield
    return
  import fcntl
  import os
  import socket

  try:
    workdir.mkdir(parents=True, exist_ok=True)
    lock = (workdir / ".lock").open("a+")
  except OSError as e:
    raise InputError(f"workdir {workdir} cannot be created or written ({e.strerror})") from e
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    lock.seek(0)
    holder = lock.read().strip() or "another process"
    lock.close()
    raise InputError(
      f"workdir {workdir} is in use by another run ({holder}); wait for it to end or choose "
      f"another --workdir"
    ) from e
  lock.seek(0)
  lock.truncate()
  lock.write(f"process {os.getpid()} on {socket.gethostname()}")
  lock.flush()
  try:
    yield
  finally:
    lock.close()


def check_model_fits(config, spec: DataSpec) -> None:
  """Builds config's model on spec's images abstractly (nothing compiled); InputError if not."""
  try:
    model = nnx.eval_shape(lambda: build_model(config, spec))
    images = jax.ShapeDtypeStruct((1, *spec.image_shape), jnp.float32)
    nnx.eval_shape(lambda m, x: m(x, train=False), model, images)
  except (TypeError, ValueError) as e:
    raise InputError(
      f"model {config.model.name} (width {config.model.width}) does not fit images of shape "
      f"{'x'.join(map(str, spec.image_shape))} ({str(e).splitlines()[0][:200]})"
    ) from e


def load_run(workdir) -> tuple[ml_collections.ConfigDict, DataSpec]:
  """The config and DataSpec a workdir was trained with."""
  workdir = pathlib.Path(workdir)
  try:
    flat = json.loads((workdir / "config.json").read_text())
    spec = json.loads((workdir / "data_spec.json").read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(f"{workdir} is not a readable bnn_jax workdir ({e})") from e
  for key in ("image_shape", "mean", "std", "class_names"):
    spec[key] = tuple(spec.get(key, ()))
  return unflatten_config(ADDED_KEYS | flat), DataSpec(**spec)


def stop_step(config, num_train: int) -> int:
  """The step a run of `config` on num_train examples stops at: num_epochs, or max_steps."""
  total = optim.steps_from_epochs(config.num_epochs, num_train // config.batch_size)
  return min(total, config.max_steps) if config.max_steps else total


def has_checkpoint(workdir) -> bool:
  """Whether workdir holds a saved checkpoint (a complete one: orbax renames it into place)."""
  folder = pathlib.Path(workdir) / "checkpoints"
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


# ----------------------------------------------------------------------------- model and state


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes), axis "data"."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh(
    (len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def build_model(config: ml_collections.ConfigDict, spec: DataSpec) -> nnx.Module:
  return models.create_model(config, spec.num_classes, spec.image_shape, nnx.Rngs(config.seed))


def _init(config, spec: DataSpec, tx: optax.GradientTransformation):
  """The function that creates a train state: step, params, the rest of the model, opt_state."""

  def init():
    graphdef, params, rest = nnx.split(build_model(config, spec), nnx.Param, ...)
    del graphdef
    return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "rest": rest,
      "opt_state": tx.init(params),
    }

  return init


def _graphdef(config, spec: DataSpec):
  return nnx.split(nnx.eval_shape(lambda: build_model(config, spec)), nnx.Param, ...)[0]


def init_state(config, spec: DataSpec, tx: optax.GradientTransformation, mesh):
  """Returns (graphdef, state) with the state replicated over `mesh`, created inside jit."""
  state = jax.jit(_init(config, spec, tx), out_shardings=NamedSharding(mesh, P()))()
  return _graphdef(config, spec), state


def abstract_state(config, spec: DataSpec, tx: optax.GradientTransformation, mesh):
  """(graphdef, state) like init_state's, the state's leaves jax.ShapeDtypeStructs replicated
  over `mesh`: a restore target for which nothing is initialized or compiled."""
  sharding = NamedSharding(mesh, P())
  shapes = jax.eval_shape(_init(config, spec, tx))
  state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
  return _graphdef(config, spec), state


def restore_state(workdir) -> tuple[ml_collections.ConfigDict, DataSpec, object, dict]:
  """(config, spec, graphdef, state) of a workdir's newest readable checkpoint, on one device.

  Reading a run never moves or changes its files; a workdir without a readable checkpoint
  raises InputError.
  """
  workdir = pathlib.Path(workdir)
  config, spec = load_run(workdir)
  mesh = make_mesh(jax.local_devices()[:1])
  tx, _ = optim.make(config, steps_per_epoch=1)
  graphdef, state = abstract_state(config, spec, tx, mesh)  # read only: never returned as is
  manager = checkpointing.checkpoint_manager(workdir, config.keep_checkpoints, read_only=True)
  if manager.latest_step() is None:
    raise InputError(f"workdir {workdir} has no checkpoint to restore")
  state, manager = checkpointing.restore_latest(
    manager, state, workdir, config.keep_checkpoints, read_only=True
  )
  manager.close()
  return config, spec, graphdef, state


def replicated(tree, mesh):
  """`tree`'s arrays (on any devices, or numpy) as global arrays replicated over `mesh`."""
  sharding = NamedSharding(mesh, P())

  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def restore_model(workdir) -> tuple[ml_collections.ConfigDict, DataSpec, nnx.Module]:
  """The model of a workdir's newest readable checkpoint (for export and inference)."""
  config, spec, graphdef, state = restore_state(workdir)
  return config, spec, nnx.merge(graphdef, state["params"], state["rest"])


# ----------------------------------------------------------------------------- metrics


class MetricsLog:
  """Scalars of a run: metrics.jsonl (process 0), and TensorBoard events where available."""

  def __init__(self, workdir: pathlib.Path):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._events = None
    if jax.process_index() == 0:
      self._events = _event_writer(self.path.parent)

  def start_at(self, step: int) -> None:
    """Prepares the file for a run that starts (or resumes) at `step`.

    A line cut short by a killed process and the records of steps after `step` (logged after
    the checkpoint the run resumes from; they will be logged again) are dropped, so that the
    file holds each step once, in order.
    """
    if jax.process_index() != 0 or not self.path.exists():
      return
    kept = [r for r in self.read() if r.get("step", 0) <= step]
    self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    self.write_rows([(step, scalars)])

  def write_rows(self, rows: list[tuple[int, dict[str, float]]]) -> None:
    """Many (step, scalars) records at once: one file append and one event flush for them all."""
    if jax.process_index() != 0 or not rows:
      return
    lines = []
    for step, scalars in rows:
      lines.append(
        json.dumps({"step": int(step)} | {k: _json_number(v) for k, v in scalars.items()})
      )
    with self.path.open("a") as f:
      f.write("\n".join(lines) + "\n")
    if self._events is not None:
      for i, (step, scalars) in enumerate(rows):
        self._events(step, scalars, flush=i == len(rows) - 1)

  def read(self) -> list[dict]:
    if not self.path.exists():
      return []
    rows = []
    for line in self.path.read_text().splitlines():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # a line cut short by a killed process
        continue
    return rows


def _json_number(value) -> float | str:
  """A float for JSON; NaN and infinities as the strings "nan", "inf", "-inf" (strict JSON)."""
  value = float(value)
  return value if math.isfinite(value) else str(value)


def _event_writer(folder: pathlib.Path):
  """write(step, scalars) into TensorBoard event files, or None without the tensorboard package."""
  # tensorboard's "no TensorFlow" marker: its writer then uses its own file layer and never
  # imports TensorFlow (which would only be probed, and costs seconds where installed).
  sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
  try:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
  except ImportError:
    return None
  writer = None

  def write(step, scalars, flush=True):
    nonlocal writer
    if writer is None:  # created on first use: a failed run leaves no empty event file
      writer = EventFileWriter(str(folder))
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    event = event_pb2.Event(wall_time=time.time(), step=int(step))
    event.summary.CopyFrom(summary_pb2.Summary(value=values))
    writer.add_event(event)
    if flush:
      writer.flush()

  return write
