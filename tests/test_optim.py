"""The optax chain: which variables get the scale L2, weight decay and clipping; the schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bnn_jax import layers, models, optim


def _params(test_config):
  model = models.create_model(test_config, 4, (8, 8, 3), nnx.Rngs(0))
  return nnx.split(model, nnx.Param, ...)[1]


def _leaves(tree):
  flat, _ = jax.tree_util.tree_flatten_with_path(
    tree, is_leaf=lambda x: isinstance(x, nnx.Variable)
  )
  return {jax.tree_util.keystr(p): v for p, v in flat}


def _sgd_config(test_config, **optimizer):
  test_config.optimizer.name = "sgd"
  test_config.optimizer.momentum = 0.0
  test_config.optimizer.schedule = "constant"
  test_config.optimizer.learning_rate = 1.0
  test_config.optimizer.weight_decay = 0.0
  test_config.optimizer.scale_l2 = 0.0
  test_config.optimizer.clip_latent_weights = False
  test_config.optimizer.update(optimizer)
  return test_config


def test_scale_l2_reaches_exactly_the_weight_scales(test_config):
  config = _sgd_config(test_config, scale_l2=0.25)
  params = _params(config)
  tx, _ = optim.make(config, steps_per_epoch=10)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  touched = set()
  for (key, u), p in zip(_leaves(updates).items(), _leaves(params).values()):
    if np.any(np.asarray(u[...]) != 0):
      touched.add(key)
      # SGD, lr 1: the update is -d/dalpha (0.25 * alpha ** 2) = -0.5 * alpha.
      np.testing.assert_allclose(u[...], -0.5 * p[...], rtol=1e-6)
  expected = {k for k, v in _leaves(params).items() if isinstance(v, layers.WeightScale)}
  assert touched == expected and len(expected) == 5


def test_weight_decay_reaches_exactly_the_float_kernels(test_config):
  config = _sgd_config(test_config, weight_decay=0.1)
  params = _params(config)
  tx, _ = optim.make(config, steps_per_epoch=10)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  touched = {k for k, u in _leaves(updates).items() if np.any(np.asarray(u[...]) != 0)}
  assert touched == {"['conv0']['kernel']", "['head']['kernel']"}


def test_clipping_reaches_exactly_the_latent_weights(test_config):
  config = _sgd_config(test_config, clip_latent_weights=True)
  params = _params(config)
  tx, _ = optim.make(config, steps_per_epoch=10)
  # A gradient of -5 everywhere: SGD (lr 1) adds 5 to every parameter.
  grads = jax.tree.map(lambda x: jnp.full_like(x, -5.0), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  for key, v in _leaves(new).items():
    old = _leaves(params)[key][...]
    if isinstance(v, layers.LatentWeight):
      np.testing.assert_allclose(v[...], np.ones_like(old), atol=1e-6)  # p + (clip - p)
    else:
      np.testing.assert_allclose(v[...], old + 5.0, rtol=1e-6)


def test_coupled_and_decoupled_scale_l2_with_adam(test_config):
  """Coupled: 2 lambda alpha passes through Adam's normalization; decoupled: added after it."""
  alpha = {"a": layers.WeightScale(jnp.array([2.0]))}
  for mode in ("coupled", "decoupled"):
    config = test_config
    config.optimizer.update(
      name="adam",
      schedule="constant",
      learning_rate=0.1,
      scale_l2=0.01,
      scale_l2_mode=mode,
      weight_decay=0.0,
    )
    tx, _ = optim.make(config, steps_per_epoch=1)
    grads = {"a": layers.WeightScale(jnp.array([0.0]))}
    updates, _ = tx.update(grads, tx.init(alpha), alpha)
    u = float(updates["a"][...][0])
    if mode == "coupled":  # Adam's first step is -lr * sign(g): a full lr step, whatever lambda
      assert u == pytest.approx(-0.1, rel=1e-4)
    else:  # -lr * 2 * lambda * alpha
      assert u == pytest.approx(-0.1 * 2 * 0.01 * 2.0, rel=1e-6)


def test_schedule_warmup_then_cosine_to_zero(test_config):
  opt = test_config.optimizer
  opt.update(learning_rate=1.0, warmup_epochs=1.0, schedule="cosine")
  schedule = optim.make_schedule(opt, num_epochs=5, steps_per_epoch=10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(30)) == pytest.approx(0.5, abs=1e-6)
  assert float(schedule(50)) == pytest.approx(0.0, abs=1e-6)


def test_step_schedule(test_config):
  opt = test_config.optimizer
  opt.update(learning_rate=1.0, schedule="step", decay_epochs=(2.0, 4.0), decay_factor=0.1)
  schedule = optim.make_schedule(opt, num_epochs=5, steps_per_epoch=10)
  assert [float(schedule(s)) for s in (19, 20, 39, 40)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_steps_from_epochs():
  assert optim.steps_from_epochs(2.5, 10) == 25
  assert optim.steps_from_epochs(0.04, 100) == 4
