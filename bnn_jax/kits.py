"""Layer kits: the factories of the layers a model swaps between full precision and binary.

Each model takes a `LayerKit`; the binary kit builds `layers.BinaryConv` & co., the float kit
plain NNX layers with ReLU, so the baseline and the binary net cannot drift apart.
"""

import dataclasses
from collections.abc import Callable

import ml_collections
from flax import nnx

from bnn_jax import conv as conv_ops
from bnn_jax import layers

# Keys of config.model that choose the kit; the others are options of the model.
KIT_KEYS = ("name", "binary", "binary_weights")


@dataclasses.dataclass(frozen=True)
class LayerKit:
  """Factories for the layers a model swaps between full precision and binary.

  conv(in, out, kernel_size, strides, rngs) -> module; dense(in, out, use_bias, rngs) -> module;
  activation() -> module or callable; dtype: the compute dtype (None: float32).
  """

  conv: Callable
  dense: Callable
  activation: Callable
  dtype: object = None


def float_kit(dtype=None) -> LayerKit:
  """Full-precision convolutions and dense layers without conv bias, ReLU activations."""

  def conv(cin, cout, kernel_size, strides, rngs, padding="SAME"):
    return nnx.Conv(
      cin,
      cout,
      kernel_size,
      strides=strides,
      padding=padding,
      use_bias=False,
      dtype=dtype,
      # Same parameters as lax's; the gradients run as matrix products on CPU (bnn_jax.conv).
      conv_general_dilated=conv_ops.conv_general_dilated,
      rngs=rngs,
    )

  def dense(cin, cout, use_bias, rngs):
    return nnx.Linear(cin, cout, use_bias=use_bias, dtype=dtype, rngs=rngs)

  return LayerKit(conv=conv, dense=dense, activation=lambda: nnx.relu, dtype=dtype)


def binary_kit(cfg: ml_collections.ConfigDict, dtype=None) -> LayerKit:
  """Binary layers configured by `cfg` (config.binary): estimators, scales, activation mode."""
  # config.binary.weight_X is option X of the binary conv and dense layers.
  kernel = {k: cfg[f"weight_{k}"] for k in ("estimator", "scale", "scale_per", "scale_init")}
  kernel["dtype"] = dtype

  def conv(cin, cout, kernel_size, strides, rngs, padding="SAME"):
    return layers.BinaryConv(
      cin, cout, kernel_size, strides=strides, padding=padding, rngs=rngs, **kernel
    )

  def dense(cin, cout, use_bias, rngs):
    return layers.BinaryDense(cin, cout, use_bias=use_bias, rngs=rngs, **kernel)

  def activation():
    return layers.BinaryActivation(
      mode=cfg.activation_mode,
      estimator=cfg.activation_estimator,
      scale=cfg.activation_scale,
      beta_init=cfg.beta_init,
    )

  return LayerKit(conv=conv, dense=dense, activation=activation, dtype=dtype)


def binary_activation_kit(cfg: ml_collections.ConfigDict, dtype=None) -> LayerKit:
  """Float weights, binary activations: the binary kit with float_kit's convolutions and dense.

  Stage 1 of two-stage training. Where the binary net has a binary layer this one has a plain
  NNX layer whose kernel (an nnx.Param, same name `kernel`, same shape) stage 2 loads as its
  latent weights; there are no weight scales alpha. The activations are the binary kit's.
  """
  fp = float_kit(dtype)
  return dataclasses.replace(binary_kit(cfg, dtype), conv=fp.conv, dense=fp.dense)


def make_kit(config: ml_collections.ConfigDict, dtype=None) -> LayerKit:
  """The kit config.model selects: binary (binary_weights True or False) or float."""
  if not config.model.binary:
    return float_kit(dtype)
  if config.model.get("binary_weights", True):  # absent in runs saved before the switch
    return binary_kit(config.binary, dtype)
  return binary_activation_kit(config.binary, dtype)
