"""Binary layers: forward passes, scale variables and their initialization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import layers


def _conv(x, w):
  return jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def test_binary_conv_uses_alpha_times_sign_and_alpha_starts_at_mean_abs():
  conv = layers.BinaryConv(3, 4, (3, 3), rngs=nnx.Rngs(0))
  w = np.asarray(conv.kernel[...])
  alpha = np.abs(w).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(conv.alpha[...], alpha, rtol=1e-6)
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 3))
  expected = _conv(x, jnp.asarray(alpha * np.where(w >= 0, 1.0, -1.0), jnp.float32))
  np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)
  assert isinstance(conv.kernel, layers.LatentWeight)
  assert isinstance(conv.alpha, layers.WeightScale)


@pytest.mark.parametrize(
  "scale,expect_alpha", [("trainable", True), ("mean_abs", False), ("none", False)]
)
def test_weight_scale_modes(scale, expect_alpha):
  dense = layers.BinaryDense(6, 2, scale=scale, rngs=nnx.Rngs(0))
  assert (dense.alpha is not None) == expect_alpha
  w = np.asarray(dense.kernel[...])
  x = jnp.ones((1, 6))
  alpha = {"trainable": np.abs(w).mean(0), "mean_abs": np.abs(w).mean(0), "none": 1.0}[scale]
  np.testing.assert_allclose(dense(x), x @ (alpha * np.where(w >= 0, 1.0, -1.0)), rtol=1e-5)


def test_mean_abs_scale_passes_no_gradient_through_the_mean():
  dense = layers.BinaryDense(4, 1, scale="mean_abs", estimator="ste", rngs=nnx.Rngs(0))
  w = dense.kernel[...]
  grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 4)))))(dense)
  grad = grads["kernel"][...]
  # dL/dW_b = 1 for every weight; STE on |w| <= 1: dL/dw = alpha, with no 1/n term from the mean.
  np.testing.assert_allclose(grad, jnp.broadcast_to(jnp.abs(w).mean(0), w.shape), rtol=1e-6)


def test_layer_scale_and_init_one():
  conv = layers.BinaryConv(2, 3, (3, 3), scale_per="layer", scale_init="one", rngs=nnx.Rngs(0))
  assert conv.alpha[...].shape == ()
  assert float(conv.alpha[...]) == 1.0


def test_binary_activation_step_and_sign_with_beta():
  x = jnp.array([-1.0, 0.0, 0.3])
  act = layers.BinaryActivation(beta_init=2.0)
  np.testing.assert_array_equal(act(x), [0.0, 0.0, 2.0])
  assert isinstance(act.beta, layers.ActivationScale)
  np.testing.assert_array_equal(
    layers.BinaryActivation(mode="sign", scale="none")(x), [-1.0, -1.0, 1.0]
  )


def test_bad_layer_settings_name_the_value():
  with pytest.raises(ValueError, match="unknown weight scale 'big'; allowed: trainable"):
    layers.BinaryDense(2, 2, scale="big", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unknown estimator 'x'"):
    layers.BinaryActivation(estimator="x")
