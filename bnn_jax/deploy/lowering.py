"""Lowers a trained NNX model to an inference Program: packed weights, folded BatchNorm.

The lowering walks the model's own `stages` (bnn_jax.stages), the list its `__call__` runs, and
hands every layer to a `Builder`; so no network's layer order is written here. The builder
decides by value kind what to emit:

* a binary conv or dense reading binary activations becomes `binary_conv`/`binary_dense`, its
  weight bits multiplied by sign(alpha_c * beta) so that its real output is
  |alpha_c * beta| * count with a positive scale (max-pooling then commutes with the scale);
* everything after it that is affine per channel (the scale, max-pooling, an eval-mode
  BatchNorm, a dense bias) is kept as a pending affine map `scale * count + shift` in float64;
* the next binarization turns that map into an integer threshold per channel,
  bit = (count > t) xor flip, exact because count is an integer (see `_thresholds`);
* anything else that reads the counts (ReLU, a residual add, a full-precision layer) gets a
  `scale_shift` op: the folded affine terms in float32.

Full-precision layers are kept as they are, BatchNorm after them too (in flax's formula, so
that the bits of the first binarization equal those of the training graph).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bnn_jax import layers, stages
from bnn_jax.deploy.program import Op, Program


@dataclasses.dataclass
class Value:
  """A value during lowering: its producing op, kind ("float", "bits", "counts") and shape.

  bits: the activation is beta * levels(bit) with levels {0, 1} ("step") or {-1, +1} ("sign").
  counts: the real value is scale * count + shift per channel (float64); `folded` names the
  BatchNorm layers folded into that map so far.
  """

  name: str
  kind: str
  shape: tuple[int, ...]
  beta: float = 1.0
  mode: str = "step"
  scale: np.ndarray | None = None
  shift: np.ndarray | None = None
  folded: tuple[str, ...] = ()


def _pairs(padding, in_hw, window, strides):
  """Explicit (low, high) padding pairs from "SAME"/"VALID" or pairs, as lax computes them."""
  if isinstance(padding, str):
    return [list(p) for p in jax.lax.padtype_to_pads(in_hw, window, strides, padding)]
  return [list(p) for p in padding]


def _out_hw(in_hw, window, strides, pads):
  return tuple(
    (n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(in_hw, window, strides, pads)
  )


def _tuple2(v):
  return (v, v) if isinstance(v, int) else tuple(v)


def _f32(x) -> np.ndarray:
  return np.asarray(jax.device_get(x), np.float32)


def _batch_norm_mul(bn: nnx.BatchNorm) -> np.ndarray:
  """rsqrt(var + eps) * scale in float32, computed with jax as flax's BatchNorm does."""
  var = jnp.asarray(_f32(bn.var[...]))
  mul = jax.lax.rsqrt(var + bn.epsilon)
  if bn.scale is not None:
    mul = mul * jnp.asarray(_f32(bn.scale[...]))
  return _f32(mul)


def _thresholds(scale: np.ndarray, shift: np.ndarray, fan_in: int):
  """Integer thresholds of bit = scale * c + shift > 0 over integers |c| <= fan_in.

  Returns (t int32, flip bool, tie margin): bit = (c > t) xor flip. scale > 0: c > -shift/scale,
  i.e. c > floor(-shift/scale); scale < 0: c < -shift/scale, i.e. not c > ceil(-shift/scale) - 1;
  scale == 0: the constant shift > 0. The tie margin is the smallest distance (in counts) of a
  real threshold to an integer: where it is tiny, a float32 graph can round either way.
  """
  t = np.zeros(scale.shape, np.int64)
  flip = np.zeros(scale.shape, bool)
  margins = []
  for c, (k, b) in enumerate(zip(scale.tolist(), shift.tolist())):
    if k == 0:
      t[c] = -fan_in - 1 if b > 0 else fan_in
      continue
    r = -b / k
    margins.append(abs(r - round(r)) if math.isfinite(r) else math.inf)
    r = min(max(r, -fan_in - 2.0), fan_in + 2.0)  # beyond the range of c: a constant bit
    if k > 0:
      t[c] = math.floor(r)
    else:
      t[c], flip[c] = math.ceil(r) - 1, True
  t = np.clip(t, -fan_in - 1, fan_in)
  margin = min(margins, default=math.inf)
  return t.astype(np.int32), flip, margin


class Builder:
  """Collects ops; `apply(name, layer, x)` lowers one layer of a model and returns its Value."""

  def __init__(self, image_shape):
    self.ops: list[Op] = []
    self.fan_in: dict[str, int] = {}
    self.input = Value("input", "float", tuple(image_shape))
    self._as_float: dict[tuple, Value] = {}  # a value read as float by several layers

  def _emit(self, kind, name, inputs, shape, attrs=None, arrays=None) -> str:
    if any(op.name == name for op in self.ops):
      raise ValueError(f"op name {name!r} is used twice")
    self.ops.append(
      Op(kind, name, tuple(i.name for i in inputs), tuple(shape), attrs or {}, arrays or {})
    )
    return name

  # --------------------------------------------------------------------------- value kinds

  def as_float(self, x: Value) -> Value:
    """Materializes bits (beta * levels) or counts (the pending affine map) as float32."""
    if x.kind == "float":
      return x
    key = (x.name, x.folded)
    if key in self._as_float:
      return self._as_float[key]
    if x.kind == "bits":
      name = self._emit(
        "unpack", f"{x.name}.unpack", [x], x.shape, {"beta": x.beta, "mode": x.mode}
      )
    else:
      name = x.folded[-1] if x.folded else f"{x.name}.scale"
      self._emit(
        "scale_shift",
        name,
        [x],
        x.shape,
        {"folds": list(x.folded)},
        {"scale": x.scale.astype(np.float32), "shift": x.shift.astype(np.float32)},
      )
    self._as_float[key] = Value(name, "float", x.shape)
    return self._as_float[key]

  # --------------------------------------------------------------------------- layers

  def apply(self, name: str, layer, x: Value) -> Value:
    """Lowers `layer` (an NNX module or an activation function) applied to x."""
    if isinstance(layer, layers.BinaryConv):
      return self._binary_conv(name, layer, x)
    if isinstance(layer, layers.BinaryDense):
      return self._binary_dense(name, layer, x)
    if isinstance(layer, layers.BinaryActivation):
      return self._binary_activation(name, layer, x)
    if isinstance(layer, nnx.BatchNorm):
      return self._batch_norm(name, layer, x)
    if isinstance(layer, nnx.Conv):
      return self._conv(name, layer, x)
    if isinstance(layer, nnx.Linear):
      return self._dense(name, layer, x)
    if layer is nnx.relu or layer is jax.nn.relu:
      return self.relu(name, x)
    raise NotImplementedError(f"layer {name} of type {type(layer).__name__} cannot be exported")

  def _conv(self, name, conv: nnx.Conv, x):
    x = self.as_float(x)
    kernel = _f32(conv.kernel[...])
    window = kernel.shape[:2]
    if conv.feature_group_count != 1 or any(
      _tuple2(d or 1) != (1, 1) for d in (conv.kernel_dilation, conv.input_dilation)
    ):
      raise NotImplementedError(f"conv {name}: groups and dilation cannot be exported")
    strides = _tuple2(conv.strides or 1)
    pads = _pairs(conv.padding, x.shape[:2], window, strides)
    arrays = {"kernel": kernel}
    if conv.bias is not None:
      arrays["bias"] = _f32(conv.bias[...])
    shape = (*_out_hw(x.shape[:2], window, strides, pads), kernel.shape[-1])
    attrs = {"strides": list(strides), "padding": pads}
    return Value(self._emit("conv", name, [x], shape, attrs, arrays), "float", shape)

  def _dense(self, name, dense: nnx.Linear, x):
    x = self.flatten(f"{name}.flatten", self.as_float(x)) if len(x.shape) > 1 else self.as_float(x)
    arrays = {"kernel": _f32(dense.kernel[...])}
    if dense.bias is not None:
      arrays["bias"] = _f32(dense.bias[...])
    shape = (arrays["kernel"].shape[-1],)
    return Value(self._emit("dense", name, [x], shape, {}, arrays), "float", shape)

  def _batch_norm(self, name, bn: nnx.BatchNorm, x):
    channels = x.shape[-1]
    mean, var = _f32(bn.mean[...]), _f32(bn.var[...])
    scale = _f32(bn.scale[...]) if bn.scale is not None else np.ones(channels, np.float32)
    bias = _f32(bn.bias[...]) if bn.bias is not None else np.zeros(channels, np.float32)
    if x.kind == "counts":  # fold: (scale * c + shift - mean) * mul + bias
      mul = _batch_norm_mul(bn).astype(np.float64)
      return dataclasses.replace(
        x,
        scale=x.scale * mul,
        shift=(x.shift - mean.astype(np.float64)) * mul + bias.astype(np.float64),
        folded=(*x.folded, name),
      )
    x = self.as_float(x)
    arrays = {"mean": mean, "var": var, "scale": scale, "bias": bias}
    attrs = {"epsilon": float(bn.epsilon)}
    return Value(self._emit("batch_norm", name, [x], x.shape, attrs, arrays), "float", x.shape)

  def _binary_activation(self, name, act: layers.BinaryActivation, x):
    beta = 1.0 if act.beta is None else float(_f32(act.beta[...]))
    if x.kind == "counts":
      fan_in = self.fan_in[x.name]
      t, flip, margin = _thresholds(x.scale, x.shift, fan_in)
      attrs = {"folds": list(x.folded), "mode": act.mode, "beta": beta}
      attrs["tie_margin"] = margin if math.isfinite(margin) else None
      arrays = {"thresholds": t, "flip": np.packbits(flip, bitorder="little")}
      self._emit("threshold", name, [x], x.shape, attrs, arrays)
    else:
      x = self.as_float(x)
      self._emit("binarize", name, [x], x.shape, {"mode": act.mode, "beta": beta})
    return Value(name, "bits", x.shape, beta=beta, mode=act.mode)

  def _binary_scale(self, name, layer, x) -> np.ndarray:
    if x.kind != "bits":
      raise NotImplementedError(
        f"binary layer {name} reads {x.kind} values; the engine needs binarized inputs"
      )
    out = layer.kernel[...].shape[-1]
    alpha = np.broadcast_to(_f32(layer.effective_alpha()), (out,))
    return alpha * np.float32(x.beta)  # float32, as the training graph's products

  def _pack_weights(self, kernel, scale) -> np.ndarray:
    """[..., I, O] latent weights -> packbits of sign(scale_o) * sign(W) as [O, ..., I]."""
    positive = np.moveaxis(kernel >= 0, -1, 0)
    flip = (scale < 0).reshape(-1, *[1] * (positive.ndim - 1))
    return np.packbits((positive ^ flip).reshape(-1), bitorder="little")

  def _binary_conv(self, name, conv: layers.BinaryConv, x):
    s = self._binary_scale(name, conv, x)
    kernel = _f32(conv.kernel[...])
    window, strides = kernel.shape[:2], _tuple2(conv.strides)
    pads = _pairs(conv.padding, x.shape[:2], window, strides)
    shape = (*_out_hw(x.shape[:2], window, strides, pads), kernel.shape[-1])
    attrs = {
      "kernel_size": list(window),
      "strides": list(strides),
      "padding": pads,
      "in_features": kernel.shape[-2],
      "out_features": kernel.shape[-1],
      "mode": x.mode,
    }
    self._emit("binary_conv", name, [x], shape, attrs, {"weights": self._pack_weights(kernel, s)})
    self.fan_in[name] = int(np.prod(kernel.shape[:-1]))
    scale = np.abs(s).astype(np.float64)
    return Value(name, "counts", shape, scale=scale, shift=np.zeros_like(scale))

  def _binary_dense(self, name, dense: layers.BinaryDense, x):
    s = self._binary_scale(name, dense, x)
    kernel = _f32(dense.kernel[...])
    if int(np.prod(x.shape)) != kernel.shape[0]:
      raise ValueError(f"binary dense {name} takes {kernel.shape[0]} inputs, gets {x.shape}")
    attrs = {"in_features": kernel.shape[0], "out_features": kernel.shape[1], "mode": x.mode}
    shape = (kernel.shape[1],)
    self._emit("binary_dense", name, [x], shape, attrs, {"weights": self._pack_weights(kernel, s)})
    self.fan_in[name] = kernel.shape[0]
    scale = np.abs(s).astype(np.float64)
    bias = np.zeros_like(scale) if dense.bias is None else _f32(dense.bias[...]).astype(np.float64)
    return Value(name, "counts", shape, scale=scale, shift=bias)

  # --------------------------------------------------------------------------- functions

  def relu(self, name, x: Value) -> Value:
    x = self.as_float(x)
    return Value(self._emit("relu", name, [x], x.shape), "float", x.shape)

  def add(self, name, x: Value, y: Value) -> Value:
    x, y = self.as_float(x), self.as_float(y)
    if x.shape != y.shape:
      raise ValueError(f"add {name}: shapes {x.shape} and {y.shape} differ")
    return Value(self._emit("add", name, [x, y], x.shape), "float", x.shape)

  def flatten(self, name, x: Value) -> Value:
    """NHWC flatten; bits keep their channel axis: (H * W, C)."""
    if x.kind == "counts":
      x = self.as_float(x)
    size = int(np.prod(x.shape))
    shape = (size // x.shape[-1], x.shape[-1]) if x.kind == "bits" else (size,)
    self._emit("flatten", name, [x], shape)
    return dataclasses.replace(x, name=name, shape=shape)

  def max_pool(self, name, x: Value, window, strides, padding="VALID") -> Value:
    window, strides = _tuple2(window), _tuple2(strides)
    pads = _pairs(padding, x.shape[:2], window, strides)
    shape = (*_out_hw(x.shape[:2], window, strides, pads), x.shape[-1])
    attrs, arrays = {"window": list(window), "strides": list(strides), "padding": pads}, {}
    if x.kind == "bits":  # max of {0, beta} or {-beta, beta}: OR of the bits if beta >= 0
      attrs["combine"] = "or" if x.beta >= 0 else "and"
    if x.kind == "counts" and np.any(x.scale < 0):
      arrays["direction"] = np.where(x.scale < 0, -1, 1).astype(np.int8)
    self._emit("max_pool", name, [x], shape, attrs, arrays)
    if x.kind == "counts":
      self.fan_in[name] = self.fan_in[x.name]
    return dataclasses.replace(x, name=name, shape=shape)

  def global_avg_pool(self, name, x: Value) -> Value:
    """The mean over the spatial axes: [H, W, C] -> [C]."""
    x = self.as_float(x)
    shape = (x.shape[-1],)
    return Value(self._emit("global_avg_pool", name, [x], shape), "float", shape)


# ----------------------------------------------------------------------------- stages


def _lower_stage(b: Builder, module: nnx.Module, stage: stages.Stage, name: str, args) -> Value:
  """Lowers one stage of `module`'s forward pass; op `name` (a block's stages: "block.part")."""
  if isinstance(stage, stages.Layer):
    layer = getattr(module, stage.name)
    if stages.is_staged(layer):  # a block: its own stages, named under its name
      return _lower_stages(b, layer, args[0], f"{name}.")
    return b.apply(name, layer, args[0])
  if isinstance(stage, stages.MaxPool):
    return b.max_pool(name, args[0], stage.window, stage.strides, stage.padding)
  if isinstance(stage, stages.Relu):
    return b.relu(name, args[0])
  if isinstance(stage, stages.Flatten):
    return b.flatten(name, args[0])
  if isinstance(stage, stages.GlobalAvgPool):
    return b.global_avg_pool(name, args[0])
  if isinstance(stage, stages.Add):
    return b.add(name, *args)
  raise NotImplementedError(f"stage {name} ({type(stage).__name__}) cannot be exported")


def _lower_stages(b: Builder, module: nnx.Module, x: Value, prefix: str = "") -> Value:
  """Walks `module.stages`, the list its own forward pass runs, into ops."""
  step = lambda stage, args: _lower_stage(b, module, stage, prefix + stage.name, args)
  return stages.walk(module, x, step)


def lower(model: nnx.Module, image_shape, mean=None, std=None, metadata=None) -> Program:
  """The Program that computes `model(x, train=False)` on uint8 images of `image_shape`.

  mean, std: the per-channel normalization of the training data (DataSpec); default 0 and 1.
  """
  if not stages.is_staged(model):
    raise NotImplementedError(
      f"no export for {type(model).__name__}: it does not list its forward pass as `stages`"
    )
  channels = image_shape[-1]
  b = Builder(image_shape)
  out = b.as_float(_lower_stages(b, model, b.input))
  return Program(
    input_shape=tuple(image_shape),
    mean=tuple(float(m) for m in (mean if mean is not None else [0.0] * channels)),
    std=tuple(float(s) for s in (std if std is not None else [1.0] * channels)),
    ops=b.ops,
    output=out.name,
    metadata=dict(metadata or {}),
  )


def tie_margin(program: Program) -> float:
  """The smallest distance, in counts, of any real threshold to an integer (inf if none)."""
  margins = [op.attrs.get("tie_margin") for op in program.ops if op.kind == "threshold"]
  margins = [m for m in margins if m is not None]
  return min(margins, default=math.inf)
