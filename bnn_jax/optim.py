"""The optax chain of a run, built in one place: `make(config, steps_per_epoch)`.

Order of the chain (each part only where the config enables it):
  1. clip the global gradient norm;
  2. coupled scale L2: add 2 * scale_l2 * alpha to the gradient of every weight scale alpha
     (layers.WeightScale; activation scales beta are not penalized), the
     gradient of `scale_l2 * sum(alpha ** 2)` in the loss (the paper's form, docs/method.md);
  3. weight decay (L2 in the gradient) on full-precision kernels only: not on latent binary
     weights, scales, biases or BatchNorm; and, with its own rate (latent_weight_decay, 0 = off),
     on latent binary weights: it pulls them toward 0, where their signs flip easily;
  4. Adam or SGD with momentum;
  5. decoupled scale L2 (AdamW style): the same 2 * scale_l2 * alpha added after the optimizer's
     normalization, so it shrinks alpha by lr * 2 * scale_l2 * alpha per step;
  6. the learning-rate schedule (warmup, then cosine to 0 or step decay);
  7. latent binary weights projected back into [-1, 1] after the update.
Variables are selected by type (layers.Scale, layers.LatentWeight), never by name.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from bnn_jax import layers

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")
SCALE_L2_MODES = ("coupled", "decoupled")


def type_mask(predicate: Callable[[nnx.Variable], bool]) -> Callable:
  """A mask function for optax.masked: True at the variables for which predicate holds."""
  return lambda params: jax.tree.map(predicate, params, is_leaf=layers.is_variable)


def is_weight_scale(v: nnx.Variable) -> bool:
  return isinstance(v, layers.WeightScale)


def is_latent_weight(v: nnx.Variable) -> bool:
  return isinstance(v, layers.LatentWeight)


def is_float_kernel(v: nnx.Variable) -> bool:
  """Full-precision conv and dense kernels: plain Params with two or more dimensions."""
  return type(v) is nnx.Param and v[...].ndim >= 2


def steps_from_epochs(epochs: float, steps_per_epoch: int) -> int:
  """Converts a duration in epochs to whole optimizer steps (the one place this is done)."""
  return int(round(epochs * steps_per_epoch))


def make_schedule(opt: ml_collections.ConfigDict, num_epochs: float, steps_per_epoch: int):
  """Linear warmup from 0, then cosine decay to 0, step decay or a constant rate."""
  total = max(1, steps_from_epochs(num_epochs, steps_per_epoch))
  warmup = min(steps_from_epochs(opt.warmup_epochs, steps_per_epoch), total - 1)
  lr = opt.learning_rate
  if opt.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(1, total - warmup))
  elif opt.schedule == "step":
    boundaries = {
      steps_from_epochs(e, steps_per_epoch) - warmup: opt.decay_factor for e in opt.decay_epochs
    }
    main = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    main = optax.constant_schedule(lr)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def clip_latent_weights(limit: float = 1.0) -> optax.GradientTransformation:
  """Turns the update of each latent binary weight into one that lands it inside [-limit, limit].

  Must be the last part of the chain: it sees the final update and the current parameters.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params):
    def project(u, p):  # both nnx.Variable; tree.map inside keeps the variable type
      if not is_latent_weight(p):
        return u
      return jax.tree.map(lambda uu, pp: jnp.clip(pp + uu, -limit, limit) - pp, u, p)

    return jax.tree.map(project, updates, params, is_leaf=layers.is_variable), state

  return optax.GradientTransformation(init_fn, update_fn)


def make(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """Returns (optax transformation, learning-rate schedule) for config.optimizer."""
  opt = config.optimizer
  schedule = make_schedule(opt, config.num_epochs, steps_per_epoch)
  parts = []
  if opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  scale_l2 = optax.masked(optax.add_decayed_weights(2.0 * opt.scale_l2), type_mask(is_weight_scale))
  if opt.scale_l2 > 0 and opt.scale_l2_mode == "coupled":
    parts.append(scale_l2)
  if opt.weight_decay > 0:
    parts.append(
      optax.masked(optax.add_decayed_weights(opt.weight_decay), type_mask(is_float_kernel))
    )
  latent_weight_decay = opt.get("latent_weight_decay", 0.0)  # absent in runs saved before it
  if latent_weight_decay > 0:
    parts.append(
      optax.masked(optax.add_decayed_weights(latent_weight_decay), type_mask(is_latent_weight))
    )
  if opt.name == "adam":
    parts.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps))
  else:
    parts.append(optax.trace(decay=opt.momentum, nesterov=opt.nesterov))
  if opt.scale_l2 > 0 and opt.scale_l2_mode == "decoupled":
    parts.append(scale_l2)
  parts.append(optax.scale_by_learning_rate(schedule))
  if opt.clip_latent_weights:
    parts.append(clip_latent_weights(1.0))
  return optax.chain(*parts), schedule


def scale_l2_penalty(params, scale_l2: float) -> jax.Array:
  """scale_l2 * sum(alpha ** 2) over all weight scales (for logging the full loss)."""
  alphas = layers.values_of_type(params, layers.WeightScale)
  return scale_l2 * sum((jnp.sum(jnp.square(a)) for a in alphas), jnp.zeros(()))
