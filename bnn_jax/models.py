"""Models: VGG-Small (and the registry); full-precision and binary variants from one definition.

Each model takes a `LayerKit`, the factories for its convolutions, dense layers and
activations. The binary kit builds `layers.BinaryConv` & co., the float kit plain NNX layers with
ReLU, so the baseline and the binary net cannot drift apart: only the kit differs.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from bnn_jax import layers


@dataclasses.dataclass(frozen=True)
class LayerKit:
  """Factories for the layers a model swaps between full precision and binary.

  conv(in, out, kernel_size, strides, rngs) -> module; dense(in, out, use_bias, rngs) -> module;
  activation() -> module or callable. `binary` tells whether they are binary layers.
  """

  conv: Callable
  dense: Callable
  activation: Callable
  binary: bool
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
      rngs=rngs,
    )

  def dense(cin, cout, use_bias, rngs):
    return nnx.Linear(cin, cout, use_bias=use_bias, dtype=dtype, rngs=rngs)

  return LayerKit(conv=conv, dense=dense, activation=lambda: nnx.relu, binary=False, dtype=dtype)


def binary_kit(cfg: ml_collections.ConfigDict, dtype=None) -> LayerKit:
  """Binary layers configured by `cfg` (config.binary): estimators, scales, activation mode."""

  def conv(cin, cout, kernel_size, strides, rngs, padding="SAME"):
    return layers.BinaryConv(
      cin,
      cout,
      kernel_size,
      strides=strides,
      padding=padding,
      estimator=cfg.weight_estimator,
      scale=cfg.weight_scale,
      scale_per=cfg.weight_scale_per,
      scale_init=cfg.weight_scale_init,
      dtype=dtype,
      rngs=rngs,
    )

  def dense(cin, cout, use_bias, rngs):
    return layers.BinaryDense(
      cin,
      cout,
      use_bias=use_bias,
      estimator=cfg.weight_estimator,
      scale=cfg.weight_scale,
      scale_per=cfg.weight_scale_per,
      scale_init=cfg.weight_scale_init,
      dtype=dtype,
      rngs=rngs,
    )

  def activation():
    return layers.BinaryActivation(
      mode=cfg.activation_mode,
      estimator=cfg.activation_estimator,
      scale=cfg.activation_scale,
      beta_init=cfg.beta_init,
    )

  return LayerKit(conv=conv, dense=dense, activation=activation, binary=True, dtype=dtype)


def batch_norm(features: int, rngs: nnx.Rngs, dtype=None) -> nnx.BatchNorm:
  """BatchNorm with momentum 0.9; statistics and affine terms stay float32."""
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


def max_pool(x: jax.Array) -> jax.Array:
  return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


VGG_SMALL_CHANNELS = (128, 128, 256, 256, 512, 512)


class VGGSmall(nnx.Module):
  """VGG-Small (LQ-Nets layout), 3x3 convs, no conv bias, pooling after convs 1, 3 and 5.

  conv0 (full precision) -> BN -> act -> conv1 -> pool -> BN -> act -> conv2 -> BN -> act ->
  conv3 -> pool -> BN -> act -> conv4 -> BN -> act -> conv5 -> pool -> BN -> final act ->
  flatten -> dense (full precision, with bias). With the binary kit, convs 1-5 are binary and
  "act" binarizes; `final_activation` is "relu" or "binary" (the kit's activation).
  """

  def __init__(
    self,
    kit: LayerKit,
    *,
    num_classes: int = 10,
    image_shape: tuple[int, int, int] = (32, 32, 3),
    width: float = 1.0,
    final_activation: str = "relu",
    rngs: nnx.Rngs,
  ):
    if final_activation not in ("relu", "binary"):
      raise ValueError(f"unknown final_activation {final_activation!r}; allowed: relu, binary")
    channels = [max(1, round(c * width)) for c in VGG_SMALL_CHANNELS]
    height, width_px, in_channels = image_shape
    dtype = kit.dtype
    fp = float_kit(dtype)
    # Named attributes (conv1, bn1, act1, ...) give readable paths in logs and exports.
    self.conv0 = fp.conv(in_channels, channels[0], (3, 3), 1, rngs)
    for i in range(1, 6):
      setattr(self, f"bn{i}", batch_norm(channels[i - 1], rngs, dtype))
      setattr(self, f"act{i}", kit.activation())
      setattr(self, f"conv{i}", kit.conv(channels[i - 1], channels[i], (3, 3), 1, rngs))
    self.bn6 = batch_norm(channels[5], rngs, dtype)
    self.act6 = kit.activation() if final_activation == "binary" else nnx.relu
    for _ in range(3):
      height, width_px = height // 2, width_px // 2
    if height < 1 or width_px < 1:
      raise ValueError(f"image_shape {image_shape} is too small for VGG-Small: need at least 8x8")
    self.head = fp.dense(height * width_px * channels[-1], num_classes, True, rngs)
    self.pool_after = (1, 3, 5)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.conv0(x)
    for i in range(1, 6):
      x = getattr(self, f"bn{i}")(x, use_running_average=not train)
      x = getattr(self, f"act{i}")(x)
      x = getattr(self, f"conv{i}")(x)
      if i in self.pool_after:
        x = max_pool(x)
    x = self.bn6(x, use_running_average=not train)
    x = self.act6(x)
    x = x.reshape(x.shape[0], -1)
    return self.head(x).astype(jnp.float32)


MODELS = {"vgg_small": VGGSmall}


def create_model(config: ml_collections.ConfigDict, num_classes: int, image_shape, rngs):
  """Builds config.model.name with the kit config.model.binary selects."""
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
  dtype = jnp.bfloat16 if config.get("compute_dtype", "float32") == "bfloat16" else None
  kit = binary_kit(config.binary, dtype) if config.model.binary else float_kit(dtype)
  kwargs = {k: v for k, v in config.model.items() if k not in ("name", "binary")}
  return MODELS[name](
    kit, num_classes=num_classes, image_shape=tuple(image_shape), rngs=rngs, **kwargs
  )


def count_params(model: nnx.Module, variable_type=nnx.Param) -> int:
  """Number of scalars in the model's variables of `variable_type`."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, variable_type)))
