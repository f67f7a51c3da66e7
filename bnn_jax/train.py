"""Training: the pure jitted train and eval steps, and the loop `train_and_evaluate`.

The data arrives through a feed (bnn_jax.data): small sets live on the device whole, ImageNet
comes from the hosts; the run folder (config, metrics, restoring a model) is bnn_jax.run;
checkpoints are bnn_jax.checkpointing. The model's static structure (graphdef) is split off once
and merged back inside jit (flax's "functional training loop").
"""

import math
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from bnn_jax import config_checks, layers, optim, run
from bnn_jax.checkpointing import checkpoint_manager, restore_latest
from bnn_jax.data import DataSpec, in_memory, normalize, open_feed

# ----------------------------------------------------------------------------- steps


def make_update(graphdef, tx, schedule, config, spec: DataSpec) -> Callable:
  """update(state, images uint8 [B,H,W,C], labels int [B]) -> (state, metrics); pure.

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
    logits = model(normalize(images, spec), train=True)
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
    old = layers.values_of_type(state["params"], layers.LatentWeight)
    new = layers.values_of_type(params, layers.LatentWeight)
    flips = sum((jnp.sum(jnp.signbit(a) != jnp.signbit(b)) for a, b in zip(old, new)), 0)
    latent = sum((a.size for a in old), 0)
    metrics = {
      "ce": ce,
      "loss": ce + optim.scale_l2_penalty(state["params"], scale_l2),
      "accuracy": accuracy,
      "learning_rate": schedule(state["step"]),
      "grad_norm": optax.global_norm(grads),
      **layers.mean_scales(state["params"]),
    }
    if latent:
      metrics["sign_flip_ratio"] = flips / latent
    new_state = {"step": state["step"] + 1, "params": params, "rest": rest, "opt_state": opt_state}
    return new_state, metrics

  return update


def make_eval_sums(graphdef, spec: DataSpec) -> Callable:
  """eval_sums(state, images uint8, labels, mask) -> {correct, loss, count} over the batch."""

  def eval_sums(state, images, labels, mask):
    model = nnx.merge(graphdef, state["params"], state["rest"])
    logits = model(normalize(images, spec), train=False)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
      "correct": jnp.sum(mask * (jnp.argmax(logits, -1) == labels)),
      "loss": jnp.sum(mask * ce),
      "count": jnp.sum(mask),
    }

  return eval_sums


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# ----------------------------------------------------------------------------- the loop


class NonFiniteLossError(FloatingPointError):
  """The loss or the parameters became NaN or infinite; the message names the step."""


class Progress:
  """Logs every log_every steps: losses, images/s, steps/s and the time left."""

  def __init__(self, config, start: int, stop: int, metrics_log: run.MetricsLog):
    self.batch_size, self.start, self.stop, self.log = config.batch_size, start, stop, metrics_log
    self.pending, self.window = [], (time.time(), start)
    self.train_seconds, self.trained_steps = 0.0, 0

  def announce(self, config, num_train: int, steps_per_epoch: int, total_steps: int) -> None:
    logging.info(
      "Training %s (%s) on %s: %d examples, %d steps/epoch, steps %d..%d of %d, %d devices.",
      config.model.name,
      "binary" if config.model.binary else "float",
      config.data.name,
      num_train,
      steps_per_epoch,
      self.start,
      self.stop,
      total_steps,
      jax.device_count(),
    )

  def add(self, step: int, metrics, steps: int = 1) -> None:
    """Keeps the device metrics of a call that ran `steps` steps ending at `step`."""
    self.pending.append((step, steps, metrics))

  def pause(self) -> None:
    """Keeps eval and checkpoint time out of the training speed."""
    self.window = (time.time(), self.window[1])

  def flush(self, last_good: int | None) -> dict[str, float]:
    """Fetches the pending per-step metrics (one transfer), checks them and logs their mean."""
    steps, values = [], []
    for (last, n, _), m in zip(self.pending, jax.device_get([m for *_, m in self.pending])):
      steps.extend(range(last - n + 1, last + 1))
      values.extend(_rows(m, n))
    self.pending.clear()
    for step, m in zip(steps, values):
      if not math.isfinite(float(m["loss"])):
        raise NonFiniteLossError(
          f"the training loss became {float(m['loss'])} at step {step}; the run stopped and "
          f"{_kept(last_good)}"
        )
    done = steps[-1]
    seconds = time.time() - self.window[0]
    self.train_seconds += seconds
    self.trained_steps += done - self.window[1]
    steps_per_sec = (done - self.window[1]) / max(seconds, 1e-9)
    self.window = (time.time(), done)
    mean = {k: float(np.mean([m[k] for m in values])) for k in values[-1]}
    # Every step's loss, for exact comparisons in tests; one append for them all.
    self.log.write_rows(
      [
        (s, {"train/loss": float(v["loss"]), "train/ce": float(v["ce"])})
        for s, v in zip(steps, values)
      ]
    )
    images_per_sec = steps_per_sec * self.batch_size
    self.log.write(
      done,
      {f"train_mean/{k}": v for k, v in mean.items()} | {"train/images_per_sec": images_per_sec},
    )
    overall = self.trained_steps / max(self.train_seconds, 1e-9)
    left = (self.stop - done) / max(overall, 1e-9)
    share = done / self.stop
    bar = "#" * int(20 * share) + "." * (20 - int(20 * share))
    logging.info(
      "[%s] step %d/%d: loss %.4f, accuracy %.4f, %.0f images/s (%.2f steps/s), %s left",
      bar,
      done,
      self.stop,
      mean["loss"],
      mean["accuracy"],
      images_per_sec,
      steps_per_sec,
      _duration(left),
    )
    return mean


def _rows(metrics, steps: int) -> list[dict]:
  """Per-step metric dicts of a call that ran `steps` steps: its scalars (one step), or the first
  `steps` rows of its stacked values [steps_per_call]."""
  if np.ndim(next(iter(metrics.values()))) == 0:
    return [metrics]
  return [{k: v[i] for k, v in metrics.items()} for i in range(steps)]


def call_plan(start: int, stop: int, periods: tuple[int, ...], steps_per_call: int):
  """Yields (steps, done) for each jitted call of the loop from step `start` to `stop`.

  A boundary is `stop` or a multiple of one of `periods` (log, eval, checkpoint); the loop runs
  calls of steps_per_call steps, shorter ones where a boundary comes sooner, so that every
  boundary falls exactly after a call.
  """
  done = start
  while done < stop:
    boundary = min([stop] + [(done // p + 1) * p for p in periods])
    steps = min(steps_per_call, boundary - done)
    done += steps
    yield steps, done


def _kept(last_good: int | None) -> str:
  if last_good is None:
    return "no checkpoint was saved"
  return f"the last good checkpoint (step {last_good}) is kept"


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains config's model in workdir (resuming if it holds a checkpoint); returns final eval."""
  workdir = pathlib.Path(workdir)
  config_checks.check_config(config, jax.device_count())
  mesh = run.make_mesh()
  feed = open_feed(config, mesh)
  config_checks.check_against_data(config, feed.num_train)
  run.check_model_fits(config, feed.spec)
  with run.locked(workdir):
    run.prepare_workdir(workdir, config, feed.spec)
    return _train(config, workdir, feed, mesh)


def _train(config, workdir: pathlib.Path, feed, mesh) -> dict[str, float]:
  """The loop of train_and_evaluate, in a prepared and locked workdir."""
  steps_per_epoch = feed.num_train // config.batch_size
  total_steps = optim.steps_from_epochs(config.num_epochs, steps_per_epoch)
  stop = min(total_steps, config.max_steps) if config.max_steps else total_steps
  eval_every = max(1, optim.steps_from_epochs(config.eval_every_epochs, steps_per_epoch))
  tx, schedule = optim.make(config, steps_per_epoch)
  graphdef, state = run.init_state(config, feed.spec, tx, mesh)
  manager = checkpoint_manager(workdir, config.keep_checkpoints)
  state, manager = restore_latest(manager, state, workdir, config.keep_checkpoints)
  start = int(jax.device_get(state["step"]))
  last_good = start if start else None

  train_step = _train_step(
    feed, make_update(graphdef, tx, schedule, config, feed.spec), start, config
  )
  evaluate = feed.evaluator(make_eval_sums(graphdef, feed.spec))
  metrics_log = run.MetricsLog(workdir)
  metrics_log.start_at(start)
  progress, result = Progress(config, start, stop, metrics_log), {}
  progress.announce(config, feed.num_train, steps_per_epoch, total_steps)
  periods = (config.log_every_steps, eval_every, config.checkpoint_every_steps)
  try:
    for steps, done in call_plan(start, stop, periods, config.steps_per_call):
      state, metrics = train_step(state, steps)
      progress.add(done, metrics, steps)
      evaluate_now = done % eval_every == 0 or done == stop
      save_now = done % config.checkpoint_every_steps == 0 or done == stop
      if done % config.log_every_steps == 0 or evaluate_now or save_now:
        progress.flush(last_good)
      if evaluate_now:
        result = evaluate(state)
        _log_eval(metrics_log, done, done / steps_per_epoch, result)
      if save_now:
        _save(manager, state, done, last_good)
        last_good = done
      if evaluate_now or save_now:
        progress.pause()
  finally:  # an error must not lose the checkpoint being written
    manager.wait_until_finished()
  if not result:  # nothing left to train: report the restored model
    result = evaluate(state)
  manager.close()
  return result


def _train_step(feed, update, start: int, config) -> Callable:
  """step(state, steps) -> (state, metrics): `steps` <= config.steps_per_call train steps."""
  if isinstance(feed, in_memory.InMemoryFeed):
    return feed.train_step(update, start, config.steps_per_call)
  step = feed.train_step(update, start)  # host-fed: one step a call (config_checks)
  return lambda state, steps: step(state)


def _log_eval(metrics_log: run.MetricsLog, done: int, epoch: float, result: dict) -> None:
  metrics_log.write(done, {f"eval/{k}": v for k, v in result.items()} | {"epoch": epoch})
  logging.info(
    "step %d (epoch %.2f): test accuracy %.4f, test loss %.4f (%d examples)",
    done,
    epoch,
    result["accuracy"],
    result["loss"],
    result["count"],
  )


def _save(manager, state, done: int, last_good: int | None) -> None:
  """Saves the state as checkpoint `done` after checking that its parameters are finite."""
  if not bool(_all_finite(state["params"])):
    raise NonFiniteLossError(
      f"the parameters became NaN or infinite by step {done}; the run stopped and "
      f"{_kept(last_good)}"
    )
  manager.save(done, args=ocp.args.StandardSave(state))
