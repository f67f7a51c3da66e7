"""Models: VGG-Small, AlexNet, ResNet-18; full-precision and binary variants from one definition.

Each model takes a `LayerKit`, the factories for its convolutions, dense layers and
activations. The binary kit builds `layers.BinaryConv` & co., the float kit plain NNX layers with
ReLU, so the baseline and the binary net cannot drift apart: only the kit differs.
"""

import inspect

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from bnn_jax import pooling
from bnn_jax.errors import InputError
from bnn_jax.kits import KIT_KEYS, LayerKit, binary_kit, float_kit, make_kit  # noqa: F401 (API)
from bnn_jax.stages import INPUT, Add, Flatten, GlobalAvgPool, Layer, MaxPool, Relu, forward


def batch_norm(features: int, rngs: nnx.Rngs, dtype=None) -> nnx.BatchNorm:
  """BatchNorm with momentum 0.9; statistics and affine terms stay float32."""
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


def max_pool(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, no padding (pooling.max_pool_2x2: its gradient is cheap on CPU)."""
  return pooling.max_pool_2x2(x)


VGG_SMALL_CHANNELS = (128, 128, 256, 256, 512, 512)


def pool_2x2(name: str) -> MaxPool:
  """The stage of `max_pool`: 2x2 window, stride 2, no padding."""
  return MaxPool(name, pool=max_pool, window=(2, 2), strides=(2, 2), padding="VALID")


def pool_3x3(name: str, padding="VALID") -> MaxPool:
  """The stage of `max_pool_3x3` with this padding: 3x3 window, stride 2."""
  pool = lambda x: max_pool_3x3(x, padding=padding)
  return MaxPool(name, pool=pool, window=(3, 3), strides=(2, 2), padding=padding)


class _Network(nnx.Module):
  """A model: its forward pass is `stages`; the logits come out in float32 (also in bfloat16)."""

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return forward(self, x, train).astype(jnp.float32)


class VGGSmall(_Network):
  """VGG-Small (LQ-Nets layout), 3x3 convs, no conv bias, pooling after convs 1, 3 and 5.

  conv0 (full precision), then BN -> act -> conv for convs 1-5, BN, act6, flatten, head (dense,
  full precision, with bias); `stages` is the exact order. With the binary kit convs 1-5 are
  binary and "act" binarizes; act6 is ReLU or, with final_activation="binary", the kit's.
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
    fp = float_kit(kit.dtype)
    # Named attributes (conv1, bn1, act1, ...) give readable paths in logs and exports.
    self.conv0 = fp.conv(in_channels, channels[0], (3, 3), 1, rngs)
    for i in range(1, 6):
      setattr(self, f"bn{i}", batch_norm(channels[i - 1], rngs, kit.dtype))
      setattr(self, f"act{i}", kit.activation())
      setattr(self, f"conv{i}", kit.conv(channels[i - 1], channels[i], (3, 3), 1, rngs))
    self.bn6 = batch_norm(channels[5], rngs, kit.dtype)
    self.act6 = _final_activation(kit, final_activation)
    height, width_px = height // 8, width_px // 8  # three 2x2 poolings
    if height < 1 or width_px < 1:
      raise ValueError(f"image_shape {image_shape} is too small for VGG-Small: need at least 8x8")
    self.head = fp.dense(height * width_px * channels[-1], num_classes, True, rngs)
    self.pool_after = (1, 3, 5)

  @property
  def stages(self) -> list:
    """The forward pass (bnn_jax.stages), walked by training and by the export alike."""
    out = [Layer("conv0")]
    for i in range(1, 6):
      out += [Layer(f"bn{i}"), Layer(f"act{i}"), Layer(f"conv{i}")]
      out += [pool_2x2(f"pool{i}")] if i in self.pool_after else []
    return [*out, Layer("bn6"), Layer("act6"), Flatten("flatten"), Layer("head")]


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


class AlexNet(_Network):
  """AlexNet, XNOR-Net style with BatchNorm (docs/method.md): no LRN, no groups, no dropout.

  Convs without bias: conv1 11x11, stride 4, padding 2, full precision; conv2 5x5; conv3-5 3x3
  (SAME); a 3x3 max-pool (stride 2, VALID) after conv1, conv2 and conv5; fc6 and fc7 without
  bias, fc8 full precision with bias; BN -> act between layers; `stages` is the exact order.
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
    fp = float_kit(kit.dtype)
    self.conv1 = fp.conv(in_channels, channels[0], (11, 11), 4, rngs, padding=((2, 2), (2, 2)))
    kernels = {2: (5, 5), 3: (3, 3), 4: (3, 3), 5: (3, 3)}
    for i in range(1, 6):
      setattr(self, f"bn{i}", batch_norm(channels[i - 1], rngs, kit.dtype))
      setattr(self, f"act{i}", kit.activation())
      if i < 5:
        conv = kit.conv(channels[i - 1], channels[i], kernels[i + 1], 1, rngs)
        setattr(self, f"conv{i + 1}", conv)
    size = lambda n: (n - 3) // 2 + 1  # 3x3 / 2 VALID max-pool
    height, width_px = (height + 4 - 11) // 4 + 1, (width_px + 4 - 11) // 4 + 1
    for _ in range(3):
      height, width_px = size(height), size(width_px)
    if height < 1 or width_px < 1:
      raise ValueError(f"image_shape {image_shape} is too small for AlexNet: need at least 63x63")
    self.fc6 = kit.dense(height * width_px * channels[4], hidden, False, rngs)
    self.bn6 = batch_norm(hidden, rngs, kit.dtype)
    self.act6 = kit.activation()
    self.fc7 = kit.dense(hidden, hidden, False, rngs)
    self.bn7 = batch_norm(hidden, rngs, kit.dtype)
    self.act7 = _final_activation(kit, final_activation)
    self.fc8 = fp.dense(hidden, num_classes, True, rngs)

  @property
  def stages(self) -> list:
    """The forward pass (bnn_jax.stages), walked by training and by the export alike."""
    out = [Layer("conv1"), pool_3x3("pool1")]
    for i in range(2, 6):
      out += [Layer(f"bn{i - 1}"), Layer(f"act{i - 1}"), Layer(f"conv{i}")]
      out += [pool_3x3(f"pool{i}")] if i in (2, 5) else []
    out += [Layer("bn5"), Layer("act5"), Flatten("flatten")]
    for i in (6, 7):
      out += [Layer(f"fc{i}"), Layer(f"bn{i}"), Layer(f"act{i}")]
    return [*out, Layer("fc8")]


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
    self.shortcut = shortcut
    self.bn1 = batch_norm(in_channels, rngs, kit.dtype)
    self.act1 = kit.activation()
    self.conv1 = kit.conv(in_channels, out_channels, (3, 3), stride, rngs, padding=_PAD1)
    self.bn2 = batch_norm(out_channels, rngs, kit.dtype)
    self.act2 = kit.activation()
    self.conv2 = kit.conv(out_channels, out_channels, (3, 3), 1, rngs, padding=_PAD1)
    if stride != 1 or in_channels != out_channels:
      self.downsample_input = downsample
      conv = kit.conv if downsample == "binary" else float_kit(kit.dtype).conv
      self.downsample_conv = conv(in_channels, out_channels, (1, 1), stride, rngs, padding="VALID")
      self.downsample_bn = batch_norm(out_channels, rngs, kit.dtype)
    else:  # identity shortcut
      self.downsample_input = None
      self.downsample_conv = self.downsample_bn = None

  @property
  def stages(self) -> list:
    """The block's forward pass (bnn_jax.stages): the order of the docstring."""
    out, skip = [Layer("bn1"), Layer("act1")], INPUT
    if self.downsample_conv is not None:
      source = "act1" if self.downsample_input == "binary" else INPUT
      out += [Layer("downsample_conv", inputs=(source,)), Layer("downsample_bn")]
      skip = "downsample_bn"
    out.append(Layer("conv1", inputs=("act1",)))
    if self.shortcut == "bireal":
      out.append(Add("add1", inputs=("conv1", skip)))
      skip = "add1"
    out += [Layer("bn2"), Layer("act2"), Layer("conv2")]
    last = "add2" if self.shortcut == "bireal" else "add"
    return [*out, Add(last, inputs=("conv2", skip))]

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return forward(self, x, train)


RESNET18_STAGES = (64, 128, 256, 512)


class ResNet18(_Network):
  """ResNet-18 (pre-activation basic blocks, docs/method.md), full-precision stem and final dense.

  A stem (7x7 conv, stride 2, padding 3, full precision; BN; ReLU; 3x3 max-pool, stride 2,
  padding 1), eight blocks stage{1-4}_block{1,2} of 64, 128, 256, 512 channels (the first block
  of stages 2-4 has stride 2), final_bn, final_act, global average pooling and the head (dense,
  full precision, with bias); `stages` is the exact order. Each block is a ResNetBlock (see
  its docstring for the shortcut and downsample switches). final_act is ReLU or, with
  final_activation="binary", the kit's activation. With the binary kit the sixteen 3x3 block
  convs are binary; the 1x1 downsample convs only with downsample="binary". 11.69 M parameters
  at 1000 classes.
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
    fp = float_kit(kit.dtype)
    self.stem_conv = fp.conv(in_channels, channels[0], (7, 7), 2, rngs, padding=((3, 3), (3, 3)))
    self.stem_bn = batch_norm(channels[0], rngs, kit.dtype)
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
    self.final_bn = batch_norm(previous, rngs, kit.dtype)
    self.final_act = _final_activation(kit, final_activation)
    self.head = fp.dense(previous, num_classes, True, rngs)

  @property
  def stages(self) -> list:
    """The forward pass (bnn_jax.stages), walked by training and by the export alike."""
    stem = [Layer("stem_conv"), Layer("stem_bn"), Relu("stem_relu")]
    blocks = [Layer(name) for name in self.block_names]
    top = [Layer("final_bn"), Layer("final_act"), GlobalAvgPool("pool"), Layer("head")]
    return [*stem, pool_3x3("stem_pool", padding=_PAD1), *blocks, *top]


MODELS = {"vgg_small": VGGSmall, "alexnet": AlexNet, "resnet18": ResNet18}
# config.model keys that choose the layer kit (make_kit), not constructor options of a model.


def create_model(config: ml_collections.ConfigDict, num_classes: int, image_shape, rngs):
  """Builds config.model.name with the kit config.model.binary (and binary_weights) selects."""
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
  dtype = jnp.bfloat16 if config.get("compute_dtype", "float32") == "bfloat16" else None
  kit = make_kit(config, dtype)
  check_model_options(config.model)
  kwargs = {k: v for k, v in config.model.items() if k not in KIT_KEYS}
  return MODELS[name](
    kit, num_classes=num_classes, image_shape=tuple(image_shape), rngs=rngs, **kwargs
  )


def model_options(name: str) -> list[str]:
  """The config.model keys (constructor keyword arguments) that model `name` accepts."""
  params = inspect.signature(MODELS[name].__init__).parameters.values()
  fixed = ("self", "kit", "num_classes", "image_shape", "rngs")
  return [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.name not in fixed]


def check_model_options(model_config: ml_collections.ConfigDict) -> None:
  """InputError naming the first key of config.model that its model (a known name) lacks."""
  allowed = model_options(model_config.name)
  unknown = sorted(set(model_config) - {*KIT_KEYS, *allowed})
  if unknown:
    raise InputError(
      f"config.model.{unknown[0]} is not an option of model {model_config.name!r}; its options "
      f"are: {', '.join(allowed)}"
    )
