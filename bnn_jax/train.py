"""Training: the pure jitted train and eval steps, and the loop `train_and_evaluate`.

The data arrives through a feed (bnn_jax.data): small sets live on the device whole, ImageNet
comes from the hosts; the run folder (config, metrics, restoring a model) is bnn_jax.run;
checkpoints are bnn_jax.checkpointing. The model's static structure (graphdef) is split off once
and merged back inside jit (flax's "functional training loop").
"""

import collections
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import nnx

from bnn_jax import config_checks, distributed, interrupts, layers, optim, run, warm_start
from bnn_jax.checkpointing import Checkpoints
from bnn_jax.data import DataSpec, in_memory, normalize, open_feed
from bnn_jax.progress import NonFiniteLossError, Progress, kept

IN_FLIGHT = 2  # jitted train calls the loop lets run ahead of the device (a stop waits for them)

# ----------------------------------------------------------------------------- losses


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
  """Per-example cross-entropy [B] of logits [B, K] against integer labels [B].

  With smoothing e > 0 the targets are q = (1 - e) * onehot(label) + e / K (label smoothing):
  -sum_k q_k log softmax(logits)_k.
  """
  if smoothing == 0:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return optax.softmax_cross_entropy(logits, optax.smooth_labels(onehot, smoothing))


def distillation_loss(
  student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
) -> jax.Array:
  """Per-example T^2 * KL(softmax(teacher / T) || softmax(student / T)) [B], logits [B, K].

  KL(p || q) = sum_k p_k (log p_k - log q_k). T^2 keeps the gradient's size independent of T
  (Hinton et al. 2015).
  """
  log_p = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  log_q = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  return temperature**2 * jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def _mixed(per_example: Callable, labels, mix) -> jax.Array:
  """per_example(labels) [B]; with mix {"labels", "lam"} (mixup, cutmix; in_memory's
  mix_and_cut) lam * per_example(labels) + (1 - lam) * per_example(mix["labels"])."""
  if mix is None:
    return per_example(labels)
  lam = mix["lam"]
  return lam * per_example(labels) + (1 - lam) * per_example(mix["labels"])


def mixed_cross_entropy(logits, labels, smoothing: float = 0.0, mix=None) -> jax.Array:
  """Per-example cross-entropy [B], each with label smoothing, mixed by `mix` (see _mixed)."""
  return _mixed(lambda y: cross_entropy(logits, y, smoothing), labels, mix)


def training_loss(
  logits, labels, teacher_logits, optimizer, distill, mix=None
) -> tuple[jax.Array, dict]:
  """(the loss minimized, its parts {"ce", and "kd" with a teacher}), means over the batch.

  Without a teacher (teacher_logits None): the cross-entropy against labels smoothed by
  optimizer.label_smoothing. With one, w = distill.weight and T = distill.temperature:
    loss = (1 - w) * CE + w * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
  "ce" is always against the hard labels (comparable between recipes). With mix (mixup or
  cutmix) every CE is mixed_cross_entropy's, "ce" included; the KD term compares teacher and
  student on the same mixed images.
  """
  smoothing = optimizer.get("label_smoothing", 0.0)
  ce = mixed_cross_entropy(logits, labels, 0.0, mix).mean()
  loss = ce if smoothing == 0 else mixed_cross_entropy(logits, labels, smoothing, mix).mean()
  if teacher_logits is None:
    return loss, {"ce": ce}
  kd = distillation_loss(logits, teacher_logits, distill.temperature).mean()
  return (1 - distill.weight) * loss + distill.weight * kd, {"ce": ce, "kd": kd}


# ----------------------------------------------------------------------------- steps


def make_update(graphdef, tx, schedule, config, spec: DataSpec, teacher_graphdef=None) -> Callable:
  """update(state, images uint8 [B,H,W,C], labels int [B], teacher=None, mix=None) -> (state,
  metrics).

  Pure. With config.grad_accum_steps = k > 1 the batch runs as k microbatches one after the
  other (example i in microbatch i % k, so no example changes device) and the update uses the
  mean of their gradients: a large global batch on small hardware. BatchNorm normalizes each
  microbatch by its own statistics and updates its running averages k times.

  Distillation: `teacher` is {"params", "rest"} of the model `teacher_graphdef` describes (an
  argument of the jitted step, not donated). Its logits are computed here, in eval mode and
  without gradient, on the same (augmented) images; the loss is training_loss's.

  mix (mixup or cutmix: in_memory.mix_and_cut): None, or {"labels", "lam"} [B], each example's
  partner label and share; the images then arrive mixed (float32 pixels for mixup). Accuracy
  counts a prediction lam for the label and 1 - lam for the partner's.
  """
  scale_l2 = config.optimizer.scale_l2
  accum = config.get("grad_accum_steps", 1)

  def teacher_logits(teacher, x):
    if teacher is None:
      return None
    model = nnx.merge(teacher_graphdef, teacher["params"], teacher["rest"])
    return jax.lax.stop_gradient(model(x, train=False).astype(jnp.float32))

  def loss_fn(params, rest, images, labels, mix, teacher):
    # Fresh Variable objects at this trace level: BatchNorm mutates its statistics here.
    rest = jax.tree.map(lambda x: x, rest)
    model = nnx.merge(graphdef, params, rest)
    x = normalize(images, spec)
    logits = model(x, train=True)
    loss, parts = training_loss(
      logits, labels, teacher_logits(teacher, x), config.optimizer, config.get("distill"), mix
    )
    rest = nnx.split(model, nnx.Param, ...)[2]
    predicted = jnp.argmax(logits, -1)
    accuracy = jnp.mean(_mixed(lambda y: predicted == y, labels, mix))
    return loss, (parts, accuracy, rest)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def accumulated_grad_fn(params, rest, images, labels, mix, teacher):
    def microbatches(x):  # [B, ...] -> [k, B/k, ...]
      return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)

    def body(carry, batch):
      rest, grad_sum = carry
      (loss, (parts, accuracy, rest)), grads = grad_fn(params, rest, *batch, teacher)
      return (rest, jax.tree.map(jnp.add, grad_sum, grads)), (loss, parts, accuracy)

    carry = (rest, jax.tree.map(jnp.zeros_like, params))
    (rest, grad_sum), (loss, parts, accuracy) = jax.lax.scan(
      body, carry, jax.tree.map(microbatches, (images, labels, mix))
    )
    grads = jax.tree.map(lambda g: g / accum, grad_sum)
    parts = jax.tree.map(jnp.mean, parts)
    return (loss.mean(), (parts, accuracy.mean(), rest)), grads

  def update(state, images, labels, teacher=None, mix=None):
    compute = grad_fn if accum == 1 else accumulated_grad_fn
    (loss, (parts, accuracy, rest)), grads = compute(
      state["params"], state["rest"], images, labels, mix, teacher
    )
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    old = layers.values_of_type(state["params"], layers.LatentWeight)
    new = layers.values_of_type(params, layers.LatentWeight)
    flips = sum((jnp.sum(jnp.signbit(a) != jnp.signbit(b)) for a, b in zip(old, new)), 0)
    latent = sum((a.size for a in old), 0)
    metrics = {
      **parts,  # "ce" (hard labels), "kd" (distillation)
      "loss": loss + optim.scale_l2_penalty(state["params"], scale_l2),
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


def describe_run(config: ml_collections.ConfigDict, workdir) -> str:
  """One log line: what a run trains, how, and where (the whole config goes to config.json)."""
  opt = config.optimizer
  stop = f", stopping at step {config.max_steps}" if config.max_steps else ""
  epochs = f"{config.num_epochs:g}"
  if config.init.get("stage1_epochs", 0):  # two stages in one run
    epochs = f"{config.init.stage1_epochs:g} epochs of stage 1 (float weights), then {epochs}"
  return (
    f"{config.model.name} ({'binary' if config.model.binary else 'float'}, width "
    f"{config.model.width:g}) on {config.data.name}: {epochs} epochs{stop}, batch "
    f"{config.batch_size}, {opt.name} lr {opt.learning_rate:g} ({opt.schedule}); workdir "
    f"{workdir} (the full config: its config.json)"
  )


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains config's model in workdir (resuming if it holds a checkpoint); returns final eval.

  With config.init.stage1_epochs > 0, two stages (`stage_configs`): stage 1 in workdir/stage1
  unless workdir already holds stage 2's checkpoint, then stage 2 in workdir.
  """
  workdir = pathlib.Path(workdir)
  config_checks.check_config(config, jax.device_count())
  if config.init.get("stage1_epochs", 0):
    stage1, stage2 = stage_configs(config, workdir)
    if not run.has_checkpoint(workdir):
      logging.info(
        "Two-stage training: stage 1 (float weights, binary activations, %g epochs) in %s",
        stage1.num_epochs,
        workdir / STAGE1_FOLDER,
      )
      train_and_evaluate(stage1, workdir / STAGE1_FOLDER)
    logging.info("Two-stage training: stage 2 (%g epochs) in %s", stage2.num_epochs, workdir)
    return train_and_evaluate(stage2, workdir)
  mesh = run.make_mesh()
  feed = open_feed(config, mesh)
  config_checks.check_against_data(config, feed.num_train)
  run.check_model_fits(config, feed.spec)
  sources = _open_sources(config, workdir, feed)  # bad teacher or stage-1 folders fail here
  with run.locked(workdir):
    with interrupts.critical():  # a signal must not cut config.json short
      run.prepare_workdir(workdir, config, feed.spec)
    return _train(config, workdir, feed, mesh, sources)


STAGE1_FOLDER = "stage1"  # two stages in one run: stage 1's workdir inside the run's


def stage_configs(config, workdir: pathlib.Path):
  """(stage 1, stage 2) of a config with init.stage1_epochs > 0.

  Stage 1: model.binary_weights False (float weights, binary activations), num_epochs =
  init.stage1_epochs; stage 2: config itself with init.from_workdir = workdir/stage1. Both have
  stage1_epochs 0, so each is an ordinary run (and what a run of two commands would be).
  """
  stage1, stage2 = config.copy_and_resolve_references(), config.copy_and_resolve_references()
  stage1.model.binary_weights = False
  stage1.num_epochs = float(config.init.stage1_epochs)
  stage1.init.stage1_epochs = 0.0
  stage2.init.stage1_epochs = 0.0
  stage2.init.from_workdir = str(workdir / STAGE1_FOLDER)
  return stage1, stage2


def _open_sources(config, workdir: pathlib.Path, feed) -> dict:
  """The other runs this one reads, restored: {"teacher": ..., "init": ...} (None where off).

  The init run (config.init.from_workdir) only where workdir has no checkpoint of its own.
  """
  sources = {"teacher": None, "init": None}
  if config.distill.teacher_workdir:
    sources["teacher"] = warm_start.open_source_run(
      "distill.teacher_workdir", config, feed.spec, feed.num_train
    )
  if config.init.from_workdir and not run.has_checkpoint(workdir):
    sources["init"] = warm_start.open_source_run(
      "init.from_workdir", config, feed.spec, feed.num_train
    )
  return sources


def _init_from_source(config, state, source, feed, mesh) -> dict:
  """state with the parameters of config.init.from_workdir's run (restored here if not yet)."""
  if source is None:  # this workdir's own checkpoints were all unreadable
    source = warm_start.open_source_run("init.from_workdir", config, feed.spec, feed.num_train)
  state, copied, fresh = warm_start.init_from_run(
    state, source[3], config.binary.weight_scale_init, mesh
  )
  logging.info(
    "Initialized from %s (step %d): %d variables copied; fresh: %s.",
    config.init.from_workdir,
    int(jax.device_get(source[3]["step"])),
    len(copied),
    ", ".join(".".join(n) for n in fresh) or "none",
  )
  return state


def _teacher(source, mesh) -> tuple[object, dict | None]:
  """(graphdef, {"params", "rest"} replicated over mesh) of a restored teacher run, or Nones."""
  if source is None:
    return None, None
  _, _, graphdef, state = source
  logging.info("Distilling from a teacher at step %d.", int(jax.device_get(state["step"])))
  return graphdef, run.replicated({"params": state["params"], "rest": state["rest"]}, mesh)


def _train(config, workdir: pathlib.Path, feed, mesh, sources) -> dict[str, float]:
  """The loop of train_and_evaluate, in a prepared and locked workdir."""
  steps_per_epoch = feed.num_train // config.batch_size
  total_steps = optim.steps_from_epochs(config.num_epochs, steps_per_epoch)
  stop = run.stop_step(config, feed.num_train)
  eval_every = max(1, optim.steps_from_epochs(config.eval_every_epochs, steps_per_epoch))
  tx, schedule = optim.make(config, steps_per_epoch)
  graphdef, state = run.init_state(config, feed.spec, tx, mesh)
  manager = Checkpoints(workdir, config.keep_checkpoints)  # seals each finished save
  state = manager.restore_latest(state)
  start = int(jax.device_get(state["step"]))
  last_good = start if start else None
  if start == 0 and config.init.from_workdir:
    state = _init_from_source(config, state, sources["init"], feed, mesh)
  teacher_graphdef, teacher = _teacher(sources["teacher"], mesh)
  sources.clear()  # the restored runs' single-device copies are no longer needed

  update = make_update(graphdef, tx, schedule, config, feed.spec, teacher_graphdef)
  train_step = _train_step(feed, update, start, teacher, config)
  evaluate = feed.evaluator(make_eval_sums(graphdef, feed.spec))
  metrics_log = run.MetricsLog(workdir)
  with interrupts.critical():  # rewrites metrics.jsonl
    metrics_log.start_at(start)
  progress, result = Progress(config, start, stop, metrics_log), {}
  progress.announce(config, feed.num_train, steps_per_epoch, total_steps)
  if _evaluation_missing(metrics_log, start, eval_every, stop):  # left by a stop (interrupts)
    result = evaluate(state)
    _log_eval(metrics_log, start, start / steps_per_epoch, result)
  periods = (config.log_every_steps, eval_every, config.checkpoint_every_steps)
  # Python would otherwise dispatch calls far ahead of the device (33 steps on a loaded CPU), and
  # a stop must first wait for all of them. IN_FLIGHT calls queued keep the device busy.
  in_flight = collections.deque()
  try:
    for steps, done in call_plan(start, stop, periods, config.steps_per_call):
      state, metrics = train_step(state, steps)
      in_flight.append(metrics)
      if len(in_flight) > IN_FLIGHT:
        jax.block_until_ready(in_flight.popleft())
      progress.add(done, metrics, steps)
      interrupts.training_started()
      interrupts.hold("step", done)
      evaluate_now = done % eval_every == 0 or done == stop
      save_now = done % config.checkpoint_every_steps == 0 or done == stop
      log_now = done % config.log_every_steps == 0 or evaluate_now or save_now
      stopping = interrupts.agreed(at_sync_point=log_now)
      if log_now or stopping:
        progress.flush(last_good)
      if evaluate_now and not stopping:
        try:
          result = evaluate(state)
          _log_eval(metrics_log, done, done / steps_per_epoch, result)
        except interrupts.EvaluationAbandoned:  # one process only; evaluated again on resume
          stopping = True
        stopping = stopping or interrupts.agreed(at_sync_point=False)  # asked while evaluating
      saved_now = save_now or (stopping and done != last_good)
      if saved_now:
        _save(manager, state, done, last_good)
        last_good = done
      if stopping or interrupts.agreed(at_sync_point=False):  # or asked while saving
        _stop(manager, done, stop, saved_now)
      if evaluate_now or save_now:
        progress.pause()
  finally:  # an error must not lose the checkpoint being written
    manager.wait_until_finished()
  if not result:  # nothing left to train: report the restored model
    result = evaluate(state)
  manager.close()
  return result


def _evaluation_missing(metrics_log, start: int, eval_every: int, stop: int) -> bool:
  """Whether step `start` (resumed from) should have been evaluated and was not: a stop skipped
  or abandoned it. Any process's view counts (metrics.jsonl is written by process 0)."""
  if not start or (start % eval_every and start != stop):
    return False
  rows = metrics_log.read()
  missing = not any(r.get("step") == start and "eval/accuracy" in r for r in rows)
  return interrupts.any_process(missing)


def _stop(manager, done: int, stop: int, saved_now: bool) -> None:
  """Ends the loop for a signal: every save written and sealed, every process past it."""
  manager.wait_until_finished()
  distributed.sync_processes("bnn_jax.interrupts.stopped")
  raise interrupts.Stopped(interrupts.stopped_words(done, stop, saved_now))


def _train_step(feed, update, start: int, teacher, config) -> Callable:
  """step(state, steps) -> (state, metrics): `steps` <= config.steps_per_call train steps."""
  if isinstance(feed, in_memory.InMemoryFeed):
    if config.steps_per_call > 1 and jax.default_backend() == "cpu":
      logging.warning(
        "steps_per_call = %d on CPU: XLA:CPU runs a loop of steps about 20x slower than the "
        "steps alone; 1 is faster here (the setting is for accelerators).",
        config.steps_per_call,
      )
    return feed.train_step(update, start, teacher, config.steps_per_call)
  step = feed.train_step(update, start, teacher)  # host-fed: one step a call (config_checks)
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
      f"the parameters became NaN or infinite by step {done}; the run stopped and {kept(last_good)}"
    )
  manager.save(done, state)
