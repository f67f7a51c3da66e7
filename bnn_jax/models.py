"""Models: VGG-Small, AlexNet, ResNet-18; full-precision and binary variants from one definition.

Each model takes a `LayerKit`, the factories for its convolutions, dense layers and
activations. The binary kit builds `layers.BinaryConv` & co., the float kit plain NNX layers with
ReLU, so the baseline and the binary net cannot drift apart: only the kit differs.
"""

import dataclasses
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from bnn_jax import layers
from bnn_jax.errors import InputError


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
    channels = _scaled(VGG_SMALL_CHANNELS, width)
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
    self.act6 = _final_activation(kit, final_activation)
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


def max_pool_3x3(x: jax.Array, padding="VALID") -> jax.Array:
  """3x3 max-pool with stride 2 (AlexNet: VALID; ResNet stem: ((1, 1), (1, 1)), -inf padding)."""
  return nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=padding)


def _scaled(channels, width: float) -> list[int]:
  return [max(1, round(c * width)) for c in channels]


def _final_activation(kit: LayerKit, final_activation: str):
  if final_activation not in ("relu", "binary"):
    raise ValueError(f"unknown final_activation {final_activation!r}; allowed: relu, binary")
  return kit.activation() if final_activation == "binary" else nnx.relu


ALEXNET_CHANNELS = (96, 256, 384, 384, 256)
ALEXNET_HIDDEN = 4096


class AlexNet(nnx.Module):
  """AlexNet, XNOR-Net style with BatchNorm (docs/method.md): no LRN, no groups, no dropout.

  Exact order (convs without bias; "pool" = 3x3 max-pool, stride 2, VALID):
    conv1 (11x11, stride 4, padding 2, full precision) -> pool -> bn1 -> act1 ->
    conv2 (5x5, SAME) -> pool -> bn2 -> act2 -> conv3 (3x3, SAME) -> bn3 -> act3 ->
    conv4 (3x3, SAME) -> bn4 -> act4 -> conv5 (3x3, SAME) -> pool -> bn5 -> act5 ->
    flatten -> fc6 (no bias) -> bn6 -> act6 -> fc7 (no bias) -> bn7 -> act7 ->
    fc8 (full precision, with bias).
  With the binary kit conv2-conv5, fc6 and fc7 are binary and act1-act6 binarize; act7 is ReLU
  or, with final_activation="binary", the kit's activation. With the float kit every act is ReLU.
  At 224x224 the spatial sizes are 55, 27, 13, 6 (fc6 sees 256 * 6 * 6 = 9216 inputs).
  """

  def __init__(
    self,
    kit: LayerKit,
    *,
    num_classes: int = 1000,
    image_shape: tuple[int, int, int] = (224, 224, 3),
    width: float = 1.0,
    final_activation: str = "relu",
    rngs: nnx.Rngs,
  ):
    channels = _scaled(ALEXNET_CHANNELS, width)
    hidden = max(1, round(ALEXNET_HIDDEN * width))
    height, width_px, in_channels = image_shape
    dtype = kit.dtype
    fp = float_kit(dtype)
    self.conv1 = fp.conv(in_channels, channels[0], (11, 11), 4, rngs, padding=((2, 2), (2, 2)))
    kernels = {2: (5, 5), 3: (3, 3), 4: (3, 3), 5: (3, 3)}
    for i in range(1, 6):
      setattr(self, f"bn{i}", batch_norm(channels[i - 1], rngs, dtype))
      setattr(self, f"act{i}", kit.activation())
      if i < 5:
        setattr(
          self, f"conv{i + 1}", kit.conv(channels[i - 1], channels[i], kernels[i + 1], 1, rngs)
        )
    size = lambda n: (n - 3) // 2 + 1  # 3x3 / 2 VALID max-pool
    height, width_px = (height + 4 - 11) // 4 + 1, (width_px + 4 - 11) // 4 + 1
    for _ in range(3):
      height, width_px = size(height), size(width_px)
    if height < 1 or width_px < 1:
      raise ValueError(f"image_shape {image_shape} is too small for AlexNet: need at least 63x63")
    self.fc6 = kit.dense(height * width_px * channels[4], hidden, False, rngs)
    self.bn6 = batch_norm(hidden, rngs, dtype)
    self.act6 = kit.activation()
    self.fc7 = kit.dense(hidden, hidden, False, rngs)
    self.bn7 = batch_norm(hidden, rngs, dtype)
    self.act7 = _final_activation(kit, final_activation)
    self.fc8 = fp.dense(hidden, num_classes, True, rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = dict(use_running_average=not train)
    x = max_pool_3x3(self.conv1(x))
    x = self.conv2(self.act1(self.bn1(x, **norm)))
    x = max_pool_3x3(x)
    x = self.conv3(self.act2(self.bn2(x, **norm)))
    x = self.conv4(self.act3(self.bn3(x, **norm)))
    x = self.conv5(self.act4(self.bn4(x, **norm)))
    x = max_pool_3x3(x)
    x = self.act5(self.bn5(x, **norm))
    x = x.reshape(x.shape[0], -1)
    x = self.act6(self.bn6(self.fc6(x), **norm))
    x = self.act7(self.bn7(self.fc7(x), **norm))
    return self.fc8(x).astype(jnp.float32)


SHORTCUTS = ("block", "bireal")
DOWNSAMPLES = ("float", "binary")
_PAD1 = ((1, 1), (1, 1))


class ResNetBlock(nnx.Module):
  """Pre-activation basic block (docs/method.md: BN -> bin-act -> bconv, residual add); 3x3 convs.

  shortcut="block" (one shortcut per two convs):
    h = conv1(act1(bn1(x)));  y = conv2(act2(bn2(h))) + skip(x)
  shortcut="bireal" (Bi-Real: one shortcut around every conv):
    h = conv1(act1(bn1(x))) + skip(x);  y = conv2(act2(bn2(h))) + h
  skip(x) is x where the shape is kept. Where it changes (stride 2 or more channels):
    downsample="float":  downsample_bn(downsample_conv(x)), a full-precision 1x1 conv, stride s
    downsample="binary": downsample_bn(downsample_conv(act1(bn1(x)))), the kit's 1x1 conv on
                         the block's binarized input (with the float kit: its ReLU input)
  conv1 has the block's stride; all 3x3 convs pad 1 on each side, the 1x1 pads nothing.
  """

  def __init__(
    self,
    kit: LayerKit,
    in_channels: int,
    out_channels: int,
    stride: int,
    *,
    shortcut: str,
    downsample: str,
    rngs: nnx.Rngs,
  ):
    if shortcut not in SHORTCUTS:
      raise ValueError(f"unknown shortcut {shortcut!r}; allowed: {', '.join(SHORTCUTS)}")
    if downsample not in DOWNSAMPLES:
      raise ValueError(f"unknown downsample {downsample!r}; allowed: {', '.join(DOWNSAMPLES)}")
    dtype = kit.dtype
    self.shortcut = shortcut
    self.bn1 = batch_norm(in_channels, rngs, dtype)
    self.act1 = kit.activation()
    self.conv1 = kit.conv(in_channels, out_channels, (3, 3), stride, rngs, padding=_PAD1)
    self.bn2 = batch_norm(out_channels, rngs, dtype)
    self.act2 = kit.activation()
    self.conv2 = kit.conv(out_channels, out_channels, (3, 3), 1, rngs, padding=_PAD1)
    if stride != 1 or in_channels != out_channels:
      self.downsample_input = downsample
      conv = kit.conv if downsample == "binary" else float_kit(dtype).conv
      self.downsample_conv = conv(in_channels, out_channels, (1, 1), stride, rngs, padding="VALID")
      self.downsample_bn = batch_norm(out_channels, rngs, dtype)
    else:  # identity shortcut
      self.downsample_input = None
      self.downsample_conv = self.downsample_bn = None

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = dict(use_running_average=not train)
    a = self.act1(self.bn1(x, **norm))
    skip = x
    if self.downsample_conv is not None:
      source = a if self.downsample_input == "binary" else x
      skip = self.downsample_bn(self.downsample_conv(source), **norm)
    h = self.conv1(a)
    if self.shortcut == "bireal":
      h = h + skip
      return self.conv2(self.act2(self.bn2(h, **norm))) + h
    return self.conv2(self.act2(self.bn2(h, **norm))) + skip


RESNET18_STAGES = (64, 128, 256, 512)


class ResNet18(nnx.Module):
  """ResNet-18 (pre-activation basic blocks, docs/method.md), full-precision stem and final dense.

  Exact order:
    stem_conv (7x7, stride 2, padding 3, full precision) -> stem_bn -> ReLU ->
    3x3 max-pool (stride 2, padding 1) ->
    stage1_block1, stage1_block2 (64 channels), stage2_block1 (stride 2), stage2_block2 (128),
    stage3_block1 (stride 2), stage3_block2 (256), stage4_block1 (stride 2), stage4_block2 (512)
    -> final_bn -> final_act -> global average pool -> head (dense, full precision, with bias).
  Each block is a ResNetBlock (see its docstring for the shortcut and downsample switches).
  final_act is ReLU or, with final_activation="binary", the kit's activation. With the binary
  kit the sixteen 3x3 block convs are binary; the 1x1 downsample convs only with
  downsample="binary". 11.69 M parameters at 1000 classes.
  """

  def __init__(
    self,
    kit: LayerKit,
    *,
    num_classes: int = 1000,
    image_shape: tuple[int, int, int] = (224, 224, 3),
    width: float = 1.0,
    final_activation: str = "relu",
    shortcut: str = "block",
    downsample: str = "float",
    rngs: nnx.Rngs,
  ):
    channels = _scaled(RESNET18_STAGES, width)
    in_channels = image_shape[-1]
    dtype = kit.dtype
    fp = float_kit(dtype)
    self.stem_conv = fp.conv(in_channels, channels[0], (7, 7), 2, rngs, padding=((3, 3), (3, 3)))
    self.stem_bn = batch_norm(channels[0], rngs, dtype)
    self.block_names = []
    previous = channels[0]
    for s, c in enumerate(channels, start=1):
      for b in (1, 2):
        stride = 2 if s > 1 and b == 1 else 1
        name = f"stage{s}_block{b}"
        block = ResNetBlock(
          kit, previous, c, stride, shortcut=shortcut, downsample=downsample, rngs=rngs
        )
        setattr(self, name, block)
        self.block_names.append(name)
        previous = c
    self.final_bn = batch_norm(previous, rngs, dtype)
    self.final_act = _final_activation(kit, final_activation)
    self.head = fp.dense(previous, num_classes, True, rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = dict(use_running_average=not train)
    x = nnx.relu(self.stem_bn(self.stem_conv(x), **norm))
    x = max_pool_3x3(x, padding=_PAD1)
    for name in self.block_names:
      x = getattr(self, name)(x, train=train)
    x = self.final_act(self.final_bn(x, **norm))
    x = jnp.mean(x, axis=(1, 2))
    return self.head(x).astype(jnp.float32)


def binary_layer_names(model: nnx.Module) -> list[str]:
  """Dotted paths of the model's binary conv and dense layers, in definition order."""
  return [
    ".".join(str(p) for p in path)
    for path, node in nnx.iter_graph(model)
    if isinstance(node, layers.BinaryConv | layers.BinaryDense)
  ]


MODELS = {"vgg_small": VGGSmall, "alexnet": AlexNet, "resnet18": ResNet18}
# config.model keys that choose the layer kit (make_kit), not constructor options of a model.
KIT_KEYS = ("name", "binary", "binary_weights")


def create_model(config: ml_collections.ConfigDict, num_classes: int, image_shape, rngs):
  """Builds config.model.name with the kit config.model.binary (and binary_weights) selects."""
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
  dtype = jnp.bfloat16 if config.get("compute_dtype", "float32") == "bfloat16" else None
  kit = make_kit(config, dtype)
  kwargs = {k: v for k, v in config.model.items() if k not in KIT_KEYS}
  allowed = model_options(name)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise InputError(
      f"config.model.{unknown[0]} is not an option of model {name!r}; its options are: "
      f"{', '.join(allowed)}"
    )
  return MODELS[name](
    kit, num_classes=num_classes, image_shape=tuple(image_shape), rngs=rngs, **kwargs
  )


def model_options(name: str) -> list[str]:
  """The config.model keys (constructor keyword arguments) that model `name` accepts."""
  params = inspect.signature(MODELS[name].__init__).parameters.values()
  fixed = ("self", "kit", "num_classes", "image_shape", "rngs")
  return [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.name not in fixed]


def count_params(model: nnx.Module, variable_type=nnx.Param) -> int:
  """Number of scalars in the model's variables of `variable_type`."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, variable_type)))
