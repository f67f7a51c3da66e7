"""Training: state, pure train and eval steps, metrics, `train_and_evaluate`.

Two ways to feed the steps: small datasets live on the device whole (input_pipeline; batches
chosen inside jit), ImageNet-scale ones come from the hosts as global batches (imagenet_input).
Checkpoints: bnn_jax/checkpointing.py; multi-process runs: bnn_jax/distributed.py.

The train state is a plain pytree {step, params, rest, opt_state}: `params` are the model's
nnx.Param variables (latent weights, scales, float kernels, BatchNorm affine terms), `rest` the
other variables (BatchNorm statistics). The model's static structure (graphdef) is split off
once; steps merge it back inside jit (flax's "functional training loop").
"""

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bnn_jax import (
  config_checks,
  distributed,
  imagenet_input,
  input_pipeline,
  layers,
  models,
  optim,
)
from bnn_jax.checkpointing import Checkpoints, checkpoint_manager, restore_latest
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
)


# ----------------------------------------------------------------------------- model and state


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over all devices of all processes, axis "data"."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a model needs to know of its data; saved in the workdir for export and inference."""

  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @classmethod
  def of(cls, ds) -> "DataSpec":
    """From an input_pipeline.InMemoryDataset or an imagenet_input.Source."""
    return cls(
      ds.num_classes, ds.image_shape, tuple(map(float, ds.mean)), tuple(map(float, ds.std))
    )


def build_model(config: ml_collections.ConfigDict, spec: DataSpec) -> nnx.Module:
  return models.create_model(config, spec.num_classes, spec.image_shape, nnx.Rngs(config.seed))


def init_state(config, spec: DataSpec, tx: optax.GradientTransformation, mesh):
  """Returns (graphdef, state) with the state replicated over `mesh`, created inside jit."""

  def init():
    graphdef, params, rest = nnx.split(build_model(config, spec), nnx.Param, ...)
    del graphdef
    return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "rest": rest,
      "opt_state": tx.init(params),
    }

  graphdef = nnx.split(nnx.eval_shape(lambda: build_model(config, spec)), nnx.Param, ...)[0]
  state = jax.jit(init, out_shardings=NamedSharding(mesh, P()))()
  return graphdef, state


def _variables_of_type(tree, kind) -> list[jax.Array]:
  is_var = lambda x: isinstance(x, nnx.Variable)
  return [v[...] for v in jax.tree.leaves(tree, is_leaf=is_var) if isinstance(v, kind)]


def scale_metrics(params) -> dict[str, jax.Array]:
  """Mean alpha and beta of every binary layer: {"alpha/conv1": ..., "beta/act1": ...}."""
  out = {}
  flat, _ = jax.tree_util.tree_flatten_with_path(
    params, is_leaf=lambda x: isinstance(x, nnx.Variable)
  )
  for path, var in flat:
    if isinstance(var, layers.Scale):
      names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
      kind = "alpha" if isinstance(var, layers.WeightScale) else "beta"
      out[f"{kind}/{'.'.join(names[:-1])}"] = jnp.mean(var[...])
  return out


# ----------------------------------------------------------------------------- steps


def make_update(graphdef, tx, schedule, config) -> Callable:
  """update(state, images float [B,H,W,C], labels int [B]) -> (state, metrics); pure.

  With config.grad_accum_steps = k > 1 the batch runs as k microbatches one after the other
  (example i in microbatch i % k, so no example changes device) and the update uses the mean
  of their gradients: a large global batch on small hardware. BatchNorm normalizes each
  microbatch by its own statistics and updates its running averages k times.
  """
  scale_l2 = config.optimizer.scale_l2
  accum = config.get("grad_accum_steps", 1)

  def loss_fn(params, rest, images, labels):
    # Fresh Variable objects at this trace level: BatchNorm mutates its statistics here.
    rest = jax.tree.map(lambda x: x, rest)
    model = nnx.merge(graphdef, params, rest)
    logits = model(images, train=True)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    rest = nnx.split(model, nnx.Param, ...)[2]
    return ce, (jnp.mean(jnp.argmax(logits, -1) == labels), rest)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulated_grad_fn(params, rest, images, labels):
    def microbatches(x):  # [B, ...] -> [k, B/k, ...]
      return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)

    def body(carry, batch):
      rest, grad_sum = carry
      (ce, (accuracy, rest)), grads = grad_fn(params, rest, *batch)
      return (rest, jax.tree.map(jnp.add, grad_sum, grads)), (ce, accuracy)

    carry = (rest, jax.tree.map(jnp.zeros_like, params))
    (rest, grad_sum), (ce, accuracy) = jax.lax.scan(
      body, carry, (microbatches(images), microbatches(labels))
    )
    grads = jax.tree.map(lambda g: g / accum, grad_sum)
    return (ce.mean(), (accuracy.mean(), rest)), grads

  def update(state, images, labels):
    compute = grad_fn if accum == 1 else accumulated_grad_fn
    (ce, (accuracy, rest)), grads = compute(state["params"], state["rest"], images, labels)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    old = _variables_of_type(state["params"], layers.LatentWeight)
    new = _variables_of_type(params, layers.LatentWeight)
    flips = sum((jnp.sum(jnp.signbit(a) != jnp.signbit(b)) for a, b in zip(old, new)), 0)
    latent = sum((a.size for a in old), 0)
    metrics = {
      "ce": ce,
      "loss": ce + optim.scale_l2_penalty(state["params"], scale_l2),
      "accuracy": accuracy,
      "learning_rate": schedule(state["step"]),
      "grad_norm": optax.global_norm(grads),
      **scale_metrics(state["params"]),
    }
    if latent:
      metrics["sign_flip_ratio"] = flips / latent
    new_state = {"step": state["step"] + 1, "params": params, "rest": rest, "opt_state": opt_state}
    return new_state, metrics

  return update


def make_in_memory_train_step(update, config, spec: DataSpec, mesh, num_train: int) -> Callable:
  """train_step(state, data, key) -> (state, metrics), jitted, state donated.

  `data` = {"images": uint8 [N,H,W,C], "labels": int32 [N]} replicated on the devices; the
  batch of each step is chosen, augmented and normalized on the device from the step counter.
  """
  batch_sharding = NamedSharding(mesh, P("data"))

  def train_step(state, data, key):
    shuffle_key, augment_key = jax.random.split(key)
    idx = input_pipeline.train_batch_indices(
      state["step"], num_train, config.batch_size, shuffle_key
    )
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    images = input_pipeline.augment(
      data["images"][idx], jax.random.fold_in(augment_key, state["step"]), config.data.augment
    )
    images = input_pipeline.normalize(images, spec.mean, spec.std)
    return update(state, images, data["labels"][idx])

  return jax.jit(train_step, donate_argnums=0)


def make_eval_step(graphdef, config, spec: DataSpec, mesh) -> Callable:
  """eval_step(state, data, index) -> sums {correct, loss, count} over eval batch `index`."""
  batch_sharding = NamedSharding(mesh, P("data"))
  size = config.eval_batch_size

  def eval_step(state, data, index):
    def batch(a):
      out = jax.lax.dynamic_slice_in_dim(a, index * size, size)
      return jax.lax.with_sharding_constraint(out, batch_sharding)

    images = input_pipeline.normalize(batch(data["images"]), spec.mean, spec.std)
    return _eval_sums(graphdef, state, images, batch(data["labels"]), batch(data["mask"]))

  return jax.jit(eval_step)


def _eval_sums(graphdef, state, images, labels, mask) -> dict[str, jax.Array]:
  model = nnx.merge(graphdef, state["params"], state["rest"])
  logits = model(images, train=False)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {
    "correct": jnp.sum(mask * (jnp.argmax(logits, -1) == labels)),
    "loss": jnp.sum(mask * ce),
    "count": jnp.sum(mask),
  }


def evaluate(eval_step, state, eval_data, num_batches: int) -> dict[str, float]:
  """Test accuracy and loss, every test example counted exactly once."""
  return _summarize(eval_step(state, eval_data, i) for i in range(num_batches))


def _summarize(batch_sums) -> dict[str, float]:
  sums = None
  for out in batch_sums:
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  return {
    "accuracy": float(sums["correct"] / sums["count"]),
    "loss": float(sums["loss"] / sums["count"]),
    "count": int(sums["count"]),
  }


# ----------------------------------------------------------------------------- host-fed steps


def make_host_fed_train_step(update, spec: DataSpec) -> Callable:
  """train_step(state, batch) -> (state, metrics), jitted, state donated.

  `batch` = {"images": uint8 [B,H,W,C], "labels": int32 [B]}: global arrays sharded on "data",
  decoded and augmented on the hosts (imagenet_input.train_batches); normalized here.
  """

  def train_step(state, batch):
    images = input_pipeline.normalize(batch["images"], spec.mean, spec.std)
    return update(state, images, batch["labels"])

  return jax.jit(train_step, donate_argnums=0)


def make_host_fed_eval_step(graphdef, spec: DataSpec) -> Callable:
  """eval_step(state, batch) -> sums {correct, loss, count}; batch as above plus "mask"."""

  def eval_step(state, batch):
    images = input_pipeline.normalize(batch["images"], spec.mean, spec.std)
    return _eval_sums(graphdef, state, images, batch["labels"], batch["mask"])

  return jax.jit(eval_step)


def _host_fed_feeds(source, graphdef, update, spec, config, mesh, start: int):
  """(train(state) -> (state, metrics), run_eval(state) -> results) for an imagenet_input source."""
  sharding = NamedSharding(mesh, P("data"))
  batches = imagenet_input.train_batches(source, sharding, config.batch_size, start, config.seed)
  train_step = make_host_fed_train_step(update, spec)
  eval_step = make_host_fed_eval_step(graphdef, spec)

  def run_eval(state):
    eval_batches, _ = imagenet_input.eval_batches(source, sharding, config.eval_batch_size)
    return _summarize(eval_step(state, batch) for batch in eval_batches)

  return (lambda state: train_step(state, next(batches))), run_eval


def replicate(tree, mesh):
  """Host arrays -> global arrays replicated on every device (works across processes)."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(
    lambda x: jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx]), tree
  )


# ----------------------------------------------------------------------------- workdir


def _flat(config: ml_collections.ConfigDict, prefix="") -> dict:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return out


def prepare_workdir(workdir: pathlib.Path, config, spec: DataSpec) -> None:
  """Writes config.json and data_spec.json, or checks that a resumed run is the same experiment."""
  config_file = workdir / "config.json"
  flat = _flat(config)
  if config_file.exists():
    try:
      saved = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise InputError(f"{config_file} is unreadable ({e}); fix it or use a new workdir") from e
    differ = sorted(
      k for k in set(flat) | set(saved) if k not in RUN_CONTROL_KEYS and flat.get(k) != saved.get(k)
    )
    if differ:
      shown = ", ".join(f"{k}: {saved.get(k)!r} -> {flat.get(k)!r}" for k in differ[:5])
      raise InputError(
        f"workdir {workdir} holds a run of another experiment ({shown}); resume it with the "
        f"same config or choose a new --workdir"
      )
  distributed.sync_processes("bnn_jax.prepare_workdir")  # every process has read config.json
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    config_file.write_text(json.dumps(flat, indent=2, sort_keys=True))
    (workdir / "data_spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2))


def load_run(workdir) -> tuple[ml_collections.ConfigDict, DataSpec]:
  """The config and DataSpec a workdir was trained with."""
  workdir = pathlib.Path(workdir)
  try:
    flat = json.loads((workdir / "config.json").read_text())
    spec = json.loads((workdir / "data_spec.json").read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise InputError(f"{workdir} is not a readable bnn_jax workdir ({e})") from e
  config = ml_collections.ConfigDict()
  for key, value in flat.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      if p not in node:
        node[p] = ml_collections.ConfigDict()
      node = node[p]
    node[leaf] = tuple(value) if isinstance(value, list) else value
  spec["image_shape"] = tuple(spec["image_shape"])
  spec["mean"], spec["std"] = tuple(spec["mean"]), tuple(spec["std"])
  return config, DataSpec(**spec)


# ----------------------------------------------------------------------------- checkpoints


def restore_model(workdir) -> tuple[ml_collections.ConfigDict, DataSpec, nnx.Module]:
  """The model of a workdir's newest readable checkpoint, in eval mode (for export/inference)."""
  workdir = pathlib.Path(workdir)
  config, spec = load_run(workdir)
  mesh = jax.make_mesh(
    (1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.local_devices()[:1]
  )
  tx, _ = optim.make(config, steps_per_epoch=1)
  graphdef, state = init_state(config, spec, tx, mesh)
  manager = checkpoint_manager(workdir, config.keep_checkpoints, read_only=True)
  if manager.latest_step() is None:
    raise InputError(f"workdir {workdir} has no checkpoint to restore")
  state, manager = restore_latest(manager, state, workdir, config.keep_checkpoints, read_only=True)
  manager.close()
  return config, spec, nnx.merge(graphdef, state["params"], state["rest"])


# ----------------------------------------------------------------------------- the loop


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class MetricsLog:
  """Appends {"step": N, name: value, ...} lines to workdir/metrics.jsonl (process 0 only).

  The same scalars go to TensorBoard through clu; this file is for scripts (ablations, tests).
  """

  def __init__(self, workdir: pathlib.Path):
    self.path = workdir / "metrics.jsonl"

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if jax.process_index() == 0:
      with self.path.open("a") as f:
        f.write(json.dumps({"step": int(step), **scalars}) + "\n")

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


def _flush(pending, writer, last_good_step) -> dict[str, float]:
  """Fetches the pending per-step metrics, checks them, writes their mean at the last step."""
  steps, metrics = zip(*pending)
  values = jax.device_get(list(metrics))
  for step, m in zip(steps, values):
    if not math.isfinite(float(m["loss"])):
      raise NonFiniteLossError(
        f"the training loss became {float(m['loss'])} at step {step}; the run stopped and the "
        f"last good checkpoint (step {last_good_step}) is kept"
      )
  mean = {k: float(np.mean([m[k] for m in values])) for k in values[-1]}
  writer.write_scalars(steps[-1], {f"train/{k}": v for k, v in mean.items()})
  pending.clear()
  return steps, values, mean


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains config's model in workdir (resuming if it holds a checkpoint); returns final eval."""
  workdir = pathlib.Path(workdir)
  config_checks.check_config(config, jax.device_count())
  host_fed = imagenet_input.is_host_fed(config.data.name)
  if host_fed:  # ImageNet-scale: decoded on the hosts, fed batch by batch
    ds = imagenet_input.load(config.data)
    num_train = ds.num_train
  else:  # small: the whole dataset on the device
    ds = input_pipeline.load(config.data)
    num_train = len(ds.train_labels)
  config_checks.check_against_data(config, num_train)
  spec = DataSpec.of(ds)
  prepare_workdir(workdir, config, spec)

  mesh = make_mesh()
  steps_per_epoch = num_train // config.batch_size
  total_steps = optim.steps_from_epochs(config.num_epochs, steps_per_epoch)
  stop_step = min(total_steps, config.max_steps) if config.max_steps else total_steps
  eval_every = max(1, optim.steps_from_epochs(config.eval_every_epochs, steps_per_epoch))

  tx, schedule = optim.make(config, steps_per_epoch)
  graphdef, state = init_state(config, spec, tx, mesh)
  manager = Checkpoints(workdir, config.keep_checkpoints)  # seals each finished save
  state = manager.restore_latest(state)
  start = int(jax.device_get(state["step"]))

  update = make_update(graphdef, tx, schedule, config)
  if host_fed:
    train_step, run_eval = _host_fed_feeds(ds, graphdef, update, spec, config, mesh, start)
  else:
    train_data = replicate({"images": ds.train_images, "labels": ds.train_labels}, mesh)
    images, labels, mask = input_pipeline.pad_for_eval(
      ds.test_images, ds.test_labels, config.eval_batch_size
    )
    eval_data = replicate({"images": images, "labels": labels, "mask": mask}, mesh)
    num_eval_batches = len(mask) // config.eval_batch_size
    in_memory_step = make_in_memory_train_step(update, config, spec, mesh, num_train)
    eval_step = make_eval_step(graphdef, config, spec, mesh)
    key = jax.random.key(config.seed)
    train_step = lambda state: in_memory_step(state, train_data, key)
    run_eval = lambda state: evaluate(eval_step, state, eval_data, num_eval_batches)

  writer = metric_writers.create_default_writer(str(workdir), just_logging=jax.process_index() > 0)
  if start == 0:
    writer.write_hparams(_flat(config))
  logging.info(
    "Training %s (%s) on %s: %d examples, %d steps/epoch, steps %d..%d of %d, %d devices.",
    config.model.name,
    "binary" if config.model.binary else "float",
    config.data.name,
    num_train,
    steps_per_epoch,
    start,
    stop_step,
    total_steps,
    jax.device_count(),
  )
  metrics_log = MetricsLog(workdir)
  report = periodic_actions.ReportProgress(num_train_steps=stop_step, writer=writer)
  pending, last_good, result = [], start, {}
  window_start, window_step = time.time(), start
  try:
    for step in range(start, stop_step):
      state, metrics = train_step(state)
      done = step + 1
      pending.append((done, metrics))
      report(done)
      last = done == stop_step
      evaluate_now = done % eval_every == 0 or last
      save_now = done % config.checkpoint_every_steps == 0 or last
      if done % config.log_every_steps == 0 or evaluate_now or save_now:
        steps, values, mean = _flush(pending, writer, last_good)
        images_per_sec = (done - window_step) * config.batch_size / (time.time() - window_start)
        writer.write_scalars(done, {"train/images_per_sec": images_per_sec})
        for s, v in zip(steps, values):  # every step's loss, for exact comparisons in tests
          metrics_log.write(s, {"train/loss": float(v["loss"]), "train/ce": float(v["ce"])})
        metrics_log.write(
          done,
          {f"train_mean/{k}": v for k, v in mean.items()}
          | {"train/images_per_sec": images_per_sec},
        )
        logging.info(
          "step %d: loss %.4f, accuracy %.4f, %.1f images/s",
          done,
          mean["loss"],
          mean["accuracy"],
          images_per_sec,
        )
        window_start, window_step = time.time(), done
      if evaluate_now:
        result = run_eval(state)
        writer.write_scalars(done, {f"eval/{k}": v for k, v in result.items()})
        metrics_log.write(done, {f"eval/{k}": v for k, v in result.items()})
        logging.info(
          "step %d: test accuracy %.4f, test loss %.4f (%d examples)",
          done,
          result["accuracy"],
          result["loss"],
          result["count"],
        )
      if save_now:
        manager.save(done, state)
        last_good = done
      if evaluate_now or save_now:  # keep eval and checkpoint time out of images/s
        window_start = time.time()
  finally:  # an error must not lose the checkpoint being written
    manager.wait_until_finished()
  if not result:  # nothing left to train: report the restored model
    result = run_eval(state)
  manager.close()
  writer.flush()
  return result
