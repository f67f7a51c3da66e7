"""bnn_jax.pooling: the 2x2 max-pool equals nnx.max_pool bit for bit forward and backward (ties,
NaN, +-inf and +-0 included), takes its own cheap path on the CPU backend and lax's reduce_window
elsewhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import models, pooling


def _reference(x):
  return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 7, 9, 2), (1, 2, 2, 1)])
@pytest.mark.parametrize("ties", [False, True])
def test_values_and_gradients_equal_nnx_max_pool(shape, ties):
  rng = np.random.default_rng(0)
  # Ties: integers in [-2, 2), so most windows hold a repeated maximum; the gradient must go to
  # the same (first, row-major) one as XLA's select-and-scatter sends it to.
  x = rng.integers(-2, 2, shape) if ties else rng.normal(size=shape)
  x = jnp.asarray(x, jnp.float32)
  y, pull = jax.vjp(pooling.max_pool_2x2, x)
  y_ref, pull_ref = jax.vjp(_reference, x)
  g = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(pull(g)[0], pull_ref(g)[0])
  if ties:  # each window's gradient lands on one position only
    window_hits = (pull(jnp.ones_like(g))[0] != 0).sum()
    assert window_hits == y.size


def _bits(a):
  return np.asarray(a, np.float32).view(np.int32)


def test_windows_with_nan_inf_and_signed_zeros_equal_nnx_max_pool_bit_for_bit():
  rng = np.random.default_rng(1)
  x = rng.integers(-2, 2, (3, 14, 18, 4)).astype(np.float32)  # ties too
  special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
  hit = rng.random(x.shape) < 0.3
  x[hit] = rng.choice(special, hit.sum())
  nan_windows = np.isnan(x).reshape(3, 7, 2, 9, 2, 4).any(axis=(2, 4))
  assert 0.2 < nan_windows.mean() < 0.9  # many windows with a NaN and many without
  x = jnp.asarray(x)
  y, pull = jax.vjp(pooling.max_pool_2x2, x)
  y_ref, pull_ref = jax.vjp(_reference, x)
  g = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
  np.testing.assert_array_equal(_bits(y), _bits(y_ref))
  np.testing.assert_array_equal(_bits(pull(g)[0]), _bits(pull_ref(g)[0]))


@pytest.mark.parametrize(
  "window, receives",
  [
    ([np.nan, 1, 2, 0], 2),  # the walk leaves the NaN for 1, then takes 2 and keeps it
    ([1, np.nan, 0, 3], 3),  # takes the NaN, leaves it for 0, then 3
    ([3, 1, 2, np.nan], 3),  # a NaN last is taken
    ([np.nan] * 4, 3),
    ([2, 2, 1, 2], 0),  # ties: the first maximum
  ],
)
def test_the_gradient_goes_where_the_row_major_walk_ends(window, receives):
  x = jnp.asarray(window, jnp.float32).reshape(1, 2, 2, 1)
  for pool in (pooling.max_pool_2x2, _reference):
    (dx,) = jax.vjp(pool, x)[1](jnp.full((1, 1, 1, 1), 5.0))
    np.testing.assert_array_equal(dx.reshape(4), 5.0 * (np.arange(4) == receives))


def test_cpu_path_has_no_reduce_window_and_other_backends_keep_lax(monkeypatch):
  x = jnp.ones((2, 4, 4, 3))
  grad_program = lambda: str(jax.make_jaxpr(jax.grad(lambda x: pooling.max_pool_2x2(x).sum()))(x))
  if jax.default_backend() == "cpu":
    assert "reduce_window" not in grad_program() and "custom_vjp_call" in grad_program()
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert "reduce_window" in grad_program()


def test_vgg_small_pools_with_it():
  # VGG-Small's pooling stages are pool_2x2's (models.py); tracing their function is enough.
  pool = models.pool_2x2("pool1").pool
  program = str(jax.make_jaxpr(jax.grad(lambda x: pool(x).sum()))(jnp.ones((2, 8, 8, 3))))
  if jax.default_backend() == "cpu":
    assert "reduce_window" not in program and "custom_vjp_call" in program
