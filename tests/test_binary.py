"""Binarizers against the formulas of docs/method.md, on a grid that includes every breakpoint."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import binary

BREAKPOINTS = [0.0, 0.4, -0.4, 0.5, -0.5, 1.0, -1.0]
GRID = np.array(
  sorted(set(BREAKPOINTS) | set(np.round(np.linspace(-1.5, 1.5, 61), 6).tolist())), np.float32
)


# The formulas, written independently of bnn_jax (plain Python, one value at a time).
def long_tailed(x):  # approximates H'(x)
  a = abs(x)
  return 2 - 4 * a if a <= 0.4 else (0.4 if a <= 1 else 0.0)


def higher_order(x):  # approximates sign'(x)
  return max(0.0, 2 - 4 * abs(x))


def approx_sign(x):
  return 2 - 2 * abs(x) if abs(x) <= 1 else 0.0


def ste(x):
  return 1.0 if abs(x) <= 1 else 0.0


def swish_sign_derivative(x, b=5.0):  # d/dx of 2 sigmoid(bx) (1 + bx (1 - sigmoid(bx))) - 1
  return jax.grad(
    lambda t: 2 * jax.nn.sigmoid(b * t) * (1 + b * t * (1 - jax.nn.sigmoid(b * t))) - 1
  )(jnp.float32(x))


FORMULAS = {
  "long_tailed": (long_tailed, "step"),
  "higher_order": (higher_order, "sign"),
  "approx_sign": (approx_sign, "sign"),
  "ste": (ste, "sign"),
  "swish_sign": (swish_sign_derivative, "sign"),
}

# The swish-sign reference is autodiff of the forward function, the estimator its closed form:
# they agree to float32 round-off; the piecewise estimators must match to the last bits.
ATOL = {name: 1e-6 for name in FORMULAS} | {"swish_sign": 2e-5}


def expected_derivative(name, x, target):
  fn, own = FORMULAS[name]
  factor = {("step", "sign"): 2.0, ("sign", "step"): 0.5}.get((own, target), 1.0)
  return np.array([factor * float(fn(float(v))) for v in x], np.float32)


def test_every_estimator_has_a_formula():
  assert set(binary.ESTIMATORS) == set(FORMULAS)


def test_paper_estimator_values_at_breakpoints():
  x = jnp.array([0.0, 0.2, 0.4, 0.41, 1.0, 1.01, -0.4, -1.0])
  np.testing.assert_allclose(
    binary.surrogate_derivative("long_tailed", x, "step"),
    [2.0, 1.2, 0.4, 0.4, 0.4, 0.0, 0.4, 0.4],
    atol=1e-6,
  )
  np.testing.assert_allclose(
    binary.surrogate_derivative("higher_order", jnp.array([0.0, 0.25, 0.5, 0.6]), "sign"),
    [2.0, 1.0, 0.0, 0.0],
    atol=1e-6,
  )


@pytest.mark.parametrize(
  "name,integral",
  [
    ("long_tailed", 1.44),
    ("higher_order", 1.0),
    ("approx_sign", 2.0),
    ("ste", 2.0),
    ("swish_sign", 2.0),
  ],
)
def test_estimator_integrals_are_not_renormalized(name, integral):
  fn, _ = binary.ESTIMATORS[name]
  x = np.linspace(-3, 3, 600_001)
  area = np.trapezoid(np.asarray(fn(jnp.asarray(x, jnp.float32)), np.float64), x)
  assert area == pytest.approx(integral, abs=1e-4)


@pytest.mark.parametrize("mode,estimator", itertools.product(binary.ACTIVATION_MODES, FORMULAS))
def test_activation_forward_and_gradients(mode, estimator):
  x = jnp.asarray(GRID)
  beta = jnp.float32(0.7)
  g = jnp.asarray(np.random.default_rng(0).normal(size=x.shape).astype(np.float32))
  out, vjp = jax.vjp(lambda x, b: binary.binarize_activation(x, b, mode, estimator), x, beta)
  h = (GRID > 0).astype(np.float32)  # H(0) = 0
  levels = h if mode == "step" else 2 * h - 1
  np.testing.assert_array_equal(out, 0.7 * levels)
  dx, dbeta = vjp(g)
  np.testing.assert_allclose(
    dx,
    np.asarray(g) * 0.7 * expected_derivative(estimator, GRID, mode),
    rtol=1e-5,
    atol=ATOL[estimator],
  )
  np.testing.assert_allclose(dbeta, np.sum(np.asarray(g) * levels), rtol=1e-5)


def test_activation_scale_per_channel_gets_summed_gradient():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 3)).astype(np.float32))
  beta = jnp.array([0.5, 1.0, 2.0])
  g = jnp.ones_like(x)
  _, vjp = jax.vjp(lambda x, b: binary.binarize_activation(x, b, "step", "long_tailed"), x, beta)
  _, dbeta = vjp(g)
  np.testing.assert_allclose(dbeta, np.sum(np.asarray(x) > 0, axis=(0, 1)))


@pytest.mark.parametrize("estimator", FORMULAS)
def test_weight_forward_and_gradients(estimator):
  rng = np.random.default_rng(2)
  w = np.tile(GRID[:, None], (1, 3))  # [in, out]: every grid value in each output channel
  alpha = jnp.array([0.3, -0.2, 1.5])
  g = rng.normal(size=w.shape).astype(np.float32)
  out, vjp = jax.vjp(lambda w, a: binary.binarize_weight(w, a, estimator), jnp.asarray(w), alpha)
  sign = np.where(w >= 0, 1.0, -1.0)  # sign(0) = +1
  np.testing.assert_array_equal(out, np.asarray(alpha) * sign)
  dw, dalpha = vjp(jnp.asarray(g))
  expected_dw = (
    g * np.asarray(alpha) * expected_derivative(estimator, w.ravel(), "sign").reshape(w.shape)
  )
  np.testing.assert_allclose(dw, expected_dw, rtol=1e-5, atol=ATOL[estimator])
  np.testing.assert_allclose(dalpha, np.sum(g * sign, axis=0), rtol=1e-5)


def test_weight_scale_per_layer_gradient_is_a_scalar_sum():
  w = jnp.asarray(np.random.default_rng(3).normal(size=(3, 3, 2, 4)).astype(np.float32))
  g = jnp.asarray(np.random.default_rng(4).normal(size=w.shape).astype(np.float32))
  _, vjp = jax.vjp(lambda w, a: binary.binarize_weight(w, a, "higher_order"), w, jnp.float32(0.5))
  _, dalpha = vjp(g)
  assert dalpha.shape == ()
  np.testing.assert_allclose(
    dalpha, np.sum(np.asarray(g) * np.where(np.asarray(w) >= 0, 1, -1)), rtol=1e-5
  )


def test_unknown_estimator_and_mode_name_the_allowed_values():
  with pytest.raises(ValueError, match="unknown estimator 'bogus'; allowed: approx_sign"):
    binary.check_estimator("bogus")
  with pytest.raises(ValueError, match="unknown activation mode 'relu'; allowed: step, sign"):
    binary.check_activation_mode("relu")
