"""The training loop's progress line: loss, accuracy, speed and time left, every log_every steps."""

import math
import time

import jax
import numpy as np
from absl import logging

from bnn_jax import optim, run


class NonFiniteLossError(FloatingPointError):
  """The loss or the parameters became NaN or infinite; the message names the step."""


class Progress:
  """Logs every log_every steps: a bar, step/total, train loss and accuracy, speed, time left.

  The speed (images/s, steps/s) counts training only: the first step of a run (which waits for
  the compilation) and the pauses for evaluation and checkpoints are left out. Time left is the
  remaining steps at the training speed so far plus the remaining pauses at the mean length of
  those so far, the first left out (it compiles the evaluation); until a second pause is
  measured the line names the number of pauses still to come instead.
  """

  def __init__(self, config, start: int, stop: int, metrics_log: run.MetricsLog):
    self.batch_size, self.start, self.stop, self.log = config.batch_size, start, stop, metrics_log
    self.checkpoint_every = config.checkpoint_every_steps
    self.eval_every = stop  # set by announce, which knows the epoch length
    self.pending, self.window = [], None  # window: (time, step) since which speed is measured
    self.train_seconds, self.trained_steps = 0.0, 0
    self.started, self.flushed_at, self.pauses = time.time(), time.time(), []

  def announce(self, config, num_train: int, steps_per_epoch: int, total_steps: int) -> None:
    # The loop's evaluation interval (train._train), for the pauses still to come.
    self.eval_every = max(1, optim.steps_from_epochs(config.eval_every_epochs, steps_per_epoch))
    logging.info(
      "Training %s (%s) on %s: %d examples, %d steps/epoch, steps %d..%d of %d, %d devices.",
      config.model.name,
      _variant(config),
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
    if self.window is None:  # the first call waits for the compilation: time it apart
      jax.block_until_ready(metrics)
      now = time.time()
      logging.info("step %d: compiled and ran in %.1f s", step, now - self.started)
      self.window = (now, step)
    self.pending.append((step, steps, metrics))

  def pause(self) -> None:
    """Keeps eval and checkpoint time out of the training speed; measures it for time left."""
    now = time.time()
    self.pauses.append(now - self.flushed_at)
    self.window = (now, self.window[1])

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
          f"{kept(last_good)}"
        )
    done, now = steps[-1], time.time()
    seconds, measured = now - self.window[0], done - self.window[1]
    self.train_seconds += seconds
    self.trained_steps += measured
    self.window = (now, done)
    mean = {k: float(np.mean([m[k] for m in values])) for k in values[-1]}
    # Every step's loss, for exact comparisons in tests; one append for them all.
    self.log.write_rows(
      [
        (s, {"train/loss": float(v["loss"]), "train/ce": float(v["ce"])})
        for s, v in zip(steps, values)
      ]
    )
    speed, rates = "", {}
    if measured:  # none when only the first (compiling) call ran since the last log
      steps_per_sec = measured / max(seconds, 1e-9)
      rates = {"train/images_per_sec": steps_per_sec * self.batch_size}
      speed = f", {rates['train/images_per_sec']:.0f} images/s ({steps_per_sec:.2f} steps/s)"
    self.log.write(done, {f"train_mean/{k}": v for k, v in mean.items()} | rates)
    share = done / self.stop
    bar = "#" * int(20 * share) + "." * (20 - int(20 * share))
    logging.info(
      "[%s] step %d/%d: train loss %.4f, train accuracy %.4f%s, %s",
      bar,
      done,
      self.stop,
      mean["loss"],
      mean["accuracy"],
      speed,
      self.time_left(done),
    )
    self.flushed_at = time.time()
    return mean

  def time_left(self, done: int) -> str:
    """The remaining training at the speed so far, plus the evaluations and checkpoints."""
    if done >= self.stop:
      return "done"
    if not self.trained_steps:
      return "time left known from the next log line"
    train = (self.stop - done) * self.train_seconds / self.trained_steps
    # The loop flushes before it evaluates or saves: a pause at `done` is still to come.
    pauses = _pauses_between(done - 1, self.stop, self.eval_every, self.checkpoint_every)
    usual = self.pauses[1:]  # the first pause also compiles the evaluation: not a usual one
    if not usual:
      plural = "s" if pauses > 1 else ""
      return f"{_duration(train)} left, plus {pauses} evaluation{plural} or checkpoint{plural}"
    return f"{_duration(train + pauses * sum(usual) / len(usual))} left"


def _pauses_between(done: int, stop: int, eval_every: int, checkpoint_every: int) -> int:
  """Steps in (done, stop] at which the loop evaluates or saves (always at stop)."""

  def multiples(every):
    return stop // every - done // every

  both = math.lcm(eval_every, checkpoint_every)
  count = multiples(eval_every) + multiples(checkpoint_every) - multiples(both)
  return count + (stop % eval_every != 0 and stop % checkpoint_every != 0)


def _variant(config) -> str:
  if not config.model.binary:
    return "float"
  return (
    "binary" if config.model.get("binary_weights", True) else "binary activations, float weights"
  )


def _rows(metrics, steps: int) -> list[dict]:
  """Per-step metric dicts of a call that ran `steps` steps: its scalars (one step), or the first
  `steps` rows of its stacked values [steps_per_call]."""
  if np.ndim(next(iter(metrics.values()))) == 0:
    return [metrics]
  return [{k: v[i] for k, v in metrics.items()} for i in range(steps)]


def kept(last_good: int | None) -> str:
  if last_good is None:
    return "no checkpoint was saved"
  return f"the last good checkpoint (step {last_good}) is kept"


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"
