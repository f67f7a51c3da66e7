"""Load-time checks of a Program: every op's kind, inputs, attributes, arrays and output shape."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from bnn_jax.errors import InputError

if TYPE_CHECKING:
  from bnn_jax.deploy.program import Op, Program

OP_KINDS = (
  "conv",
  "dense",
  "batch_norm",
  "relu",
  "add",
  "max_pool",
  "global_avg_pool",
  "flatten",
  "binarize",
  "unpack",
  "binary_conv",
  "binary_dense",
  "threshold",
  "scale_shift",
)

# What the engine allocates for one image, at most: activations of all ops together, and the
# workspace of one op (padded input, weight words as the engine prepares them). A real model
# needs far less (ResNet-18 on ImageNet: about 40 MB of activations); a header that promises
# more is refused before anything is allocated.
MAX_ACTIVATION_BYTES = 1 << 30
MAX_OP_WORKSPACE_BYTES = 1 << 30
WORD_BITS = 32
MODES = ("step", "sign")


@dataclasses.dataclass(frozen=True)
class _Value:
  """What an op produces: kind ("float", "bits", "counts"), shape without batch, bits' mode."""

  kind: str
  shape: tuple[int, ...]
  mode: str | None = None

  def bytes(self) -> int:
    """Bytes of this value for one image (bits packed in uint32 words)."""
    if self.kind == "bits":
      return math.prod(self.shape[:-1]) * -(-self.shape[-1] // WORD_BITS) * 4
    return math.prod(self.shape) * 4


def check_program(program: Program, source: str = "program") -> None:
  """Raises InputError, naming the op and the field, unless every op can run as declared.

  Checks, op by op and before anything is allocated: the kind, the names it reads (earlier ops
  or "input") and the kinds of their values (float, bits, counts), its attributes, each array's
  dtype and shape against what the op needs (e.g. a binary_conv's weights hold exactly
  out_features * kh * kw * in_features bits), its declared output shape against the one that
  follows from its inputs and attributes, and the memory the engine needs for one image.
  """
  check = _Checker(source)
  check.input(program)
  values = {"input": _Value("float", tuple(program.input_shape))}
  total = values["input"].bytes()
  for op in program.ops:
    out = check.op(op, values)
    total += out.bytes()
    if total > MAX_ACTIVATION_BYTES:
      check.fail(
        op,
        "shape",
        f"{list(op.shape)} brings the activations of one image to {total / 2**30:.1f} GiB, "
        f"more than the {MAX_ACTIVATION_BYTES / 2**30:.0f} GiB the engine allows",
      )
    values[op.name] = out
  if program.output not in values or program.output == "input":
    raise InputError(f"{source}: the output {program.output!r} is not an op")
  logits = values[program.output]
  if logits.kind != "float" or len(logits.shape) != 1:
    raise InputError(
      f"{source}: the output {program.output!r} is {logits.kind} of shape "
      f"{list(logits.shape)}; it must be float logits [num_classes]"
    )


class _Checker:
  """The checks of `check_program`; each failure is one InputError sentence."""

  def __init__(self, source: str):
    self.source = source

  def fail(self, op: Op, field: str, what: str):
    raise InputError(f"{self.source}: op {op.name!r} ({op.kind}) {field} {what}")

  # --------------------------------------------------------------------------- program

  def input(self, program: Program) -> None:
    shape = program.input_shape
    if len(shape) != 3 or not all(is_int(d) and d >= 1 for d in shape):
      raise InputError(f"{self.source}: input_shape {list(shape)} is not [H, W, C] of sizes >= 1")
    size = _Value("float", tuple(shape)).bytes()
    if size > MAX_ACTIVATION_BYTES:
      raise InputError(
        f"{self.source}: input_shape {list(shape)} makes one image {size / 2**30:.1f} GiB as "
        f"float32, more than the {MAX_ACTIVATION_BYTES / 2**30:.0f} GiB the engine allows"
      )
    for key in ("mean", "std"):
      values = getattr(program, key)
      if len(values) != shape[-1] or not all(_is_number(v) for v in values):
        raise InputError(
          f"{self.source}: {key} {list(values)} is not {shape[-1]} finite numbers, one per "
          f"input channel"
        )
    if any(v == 0 for v in program.std):
      raise InputError(f"{self.source}: std {list(program.std)} has a zero")
    names = [op.name for op in program.ops]
    for op in program.ops:
      if not isinstance(op.name, str) or op.name == "input" or names.count(op.name) > 1:
        raise InputError(f"{self.source}: op name {op.name!r} is reserved or used twice")

  # --------------------------------------------------------------------------- one op

  def op(self, op: Op, values: dict) -> _Value:
    """The checked value `op` computes."""
    if op.kind not in OP_KINDS:
      raise InputError(f"{self.source}: op {op.name!r} has unknown kind {op.kind!r}")
    missing = [i for i in op.inputs if i not in values]
    if missing:
      raise InputError(
        f"{self.source}: op {op.name!r} reads {missing[0]!r}, not computed before it"
      )
    arity = 2 if op.kind == "add" else 1
    if len(op.inputs) != arity:
      self.fail(op, "inputs", f"{list(op.inputs)} are not {arity} value(s)")
    args = [values[i] for i in op.inputs]
    allowed = self.ALLOWED_ARRAYS.get(op.kind, ())
    unexpected = sorted(set(op.arrays) - set(allowed))
    if unexpected:
      self.fail(op, f"array {unexpected[0]!r}", f"is not one this op reads (it reads {allowed})")
    out = getattr(self, f"_{op.kind}")(op, *args)
    if tuple(op.shape) != out.shape:
      self.fail(
        op,
        "shape",
        f"{list(op.shape)} does not follow from its input and attributes: expected "
        f"{list(out.shape)}",
      )
    return out

  ALLOWED_ARRAYS = {
    "conv": ("kernel", "bias"),
    "dense": ("kernel", "bias"),
    "batch_norm": ("mean", "var", "scale", "bias"),
    "max_pool": ("direction",),
    "binary_conv": ("weights",),
    "binary_dense": ("weights",),
    "threshold": ("thresholds", "flip"),
    "scale_shift": ("scale", "shift"),
  }

  # --------------------------------------------------------------------------- helpers

  def reads(self, op: Op, x: _Value, kind: str, rank: int | None = None) -> None:
    if x.kind != kind:
      self.fail(op, f"input {op.inputs[0]!r}", f"is {x.kind}; this op reads {kind}")
    if rank is not None and len(x.shape) != rank:
      self.fail(
        op, f"input {op.inputs[0]!r}", f"has shape {list(x.shape)}; it must have {rank} axes"
      )
    if not x.shape:
      self.fail(op, f"input {op.inputs[0]!r}", "has no axes")

  def array(self, op: Op, key: str, dtype: str, shape: tuple, optional=False) -> None:
    if key not in op.arrays:
      if optional:
        return
      self.fail(op, f"array {key!r}", "is missing")
    a = op.arrays[key]
    if a.dtype.name != dtype:
      self.fail(op, f"array {key!r}", f"has dtype {a.dtype.name}; it must be {dtype}")
    if tuple(a.shape) != tuple(shape):
      self.fail(op, f"array {key!r}", f"has shape {list(a.shape)}; it must be {list(shape)}")

  def attr_ints(self, op: Op, key: str, n: int, minimum: int) -> list[int]:
    v = op.attrs.get(key)
    if not isinstance(v, list) or len(v) != n or not all(is_int(x) and x >= minimum for x in v):
      self.fail(op, f"attribute {key!r}", f"{v!r} is not {n} integers >= {minimum}")
    return v

  def attr_choice(self, op: Op, key: str, choices: tuple) -> str:
    v = op.attrs.get(key)
    if v not in choices:
      self.fail(op, f"attribute {key!r}", f"{v!r} is not one of {choices}")
    return v

  def attr_number(self, op: Op, key: str, minimum: float = -math.inf) -> float:
    v = op.attrs.get(key)
    if not _is_number(v) or v < minimum:
      self.fail(op, f"attribute {key!r}", f"{v!r} is not a finite number >= {minimum}")
    return v

  def window(self, op: Op, x: _Value, window: tuple[int, int], name: str) -> tuple[int, int]:
    """Output height and width of a windowed op on x [H, W, C]; checks its padded input.

    name: the field the window comes from, for messages ("attribute 'window'", ...).
    """
    strides = self.attr_ints(op, "strides", 2, 1)
    pads = op.attrs.get("padding")
    ok = isinstance(pads, list) and len(pads) == 2
    ok = ok and all(isinstance(p, list) and len(p) == 2 for p in pads)
    ok = ok and all(is_int(v) and 0 <= v < k for p, k in zip(pads, window) for v in p)
    if not ok:  # padding of a whole window or more adds outputs that read only zeros
      self.fail(
        op,
        "attribute 'padding'",
        f"{pads!r} is not [[top, bottom], [left, right]] of integers in [0, window {window})",
      )
    padded = [n + lo + hi for n, (lo, hi) in zip(x.shape[:2], pads)]
    if any(p < k for p, k in zip(padded, window)):
      self.fail(op, name, f"{list(window)} is larger than the padded input {padded}")
    padded_bytes = _Value(x.kind, (*padded, x.shape[-1])).bytes()
    self.workspace(op, padded_bytes, "its padded input (one image)")
    return tuple((p - k) // s + 1 for p, k, s in zip(padded, window, strides))

  def workspace(self, op: Op, nbytes: int, what: str) -> None:
    if nbytes > MAX_OP_WORKSPACE_BYTES:
      self.fail(
        op,
        "attributes",
        f"make {what} {nbytes / 2**30:.1f} GiB, more than the "
        f"{MAX_OP_WORKSPACE_BYTES / 2**30:.0f} GiB the engine allows one op",
      )

  def binary_weights(self, op: Op, x: _Value, taps: int) -> int:
    """Checks in_features, out_features, mode and the packed weights; returns out_features.

    taps: kernel positions (kh * kw) of a binary_conv; for binary_dense, the input's positions
    (all axes but the last), its in_features being taps * channels.
    """
    channels = x.shape[-1]
    fan_in = channels if op.kind == "binary_conv" else taps * channels
    if op.attrs.get("in_features") != fan_in:
      self.fail(
        op,
        "attribute 'in_features'",
        f"{op.attrs.get('in_features')!r} does not match its input {op.inputs[0]!r} of shape "
        f"{list(x.shape)} ({fan_in})",
      )
    o = op.attrs.get("out_features")
    if not is_int(o) or o < 1:
      self.fail(op, "attribute 'out_features'", f"{o!r} is not an integer >= 1")
    mode = self.attr_choice(op, "mode", MODES)
    if mode != x.mode:
      self.fail(op, "attribute 'mode'", f"{mode!r} differs from its input's {x.mode!r}")
    # The engine unpacks the bits into uint64 words, channels padded to 32 (load time only).
    self.workspace(op, o * taps * -(-channels // WORD_BITS) * WORD_BITS * 8, "its weight words")
    self.array(op, "weights", "uint8", (-(-(o * taps * channels) // 8),))
    return o

  # --------------------------------------------------------------------------- kinds

  def _conv(self, op, x):
    self.reads(op, x, "float", 3)
    kernel = op.arrays.get("kernel")
    if kernel is None or kernel.ndim != 4:
      self.fail(op, "array 'kernel'", "is missing or not [kh, kw, in_features, out_features]")
    kh, kw, _, o = kernel.shape
    self.array(op, "kernel", "float32", (kh, kw, x.shape[-1], o))
    self.array(op, "bias", "float32", (o,), optional=True)
    return _Value("float", (*self.window(op, x, (kh, kw), "array 'kernel'"), o))

  def _dense(self, op, x):
    self.reads(op, x, "float", 1)
    kernel = op.arrays.get("kernel")
    if kernel is None or kernel.ndim != 2:
      self.fail(op, "array 'kernel'", "is missing or not [in_features, out_features]")
    o = kernel.shape[1]
    self.array(op, "kernel", "float32", (x.shape[0], o))
    self.array(op, "bias", "float32", (o,), optional=True)
    return _Value("float", (o,))

  def _batch_norm(self, op, x):
    self.reads(op, x, "float")
    for key in ("mean", "var", "scale", "bias"):
      self.array(op, key, "float32", (x.shape[-1],))
    self.attr_number(op, "epsilon", 0.0)
    return x

  def _relu(self, op, x):
    self.reads(op, x, "float")
    return x

  def _add(self, op, x, y):
    self.reads(op, x, "float")
    if y != x:
      self.fail(
        op,
        f"input {op.inputs[1]!r}",
        f"is {y.kind} {list(y.shape)}; it must match {op.inputs[0]!r}: {x.kind} {list(x.shape)}",
      )
    return x

  def _max_pool(self, op, x):
    if len(x.shape) != 3:
      self.fail(op, f"input {op.inputs[0]!r}", f"has shape {list(x.shape)}; it must be [H, W, C]")
    if x.kind == "bits":
      self.attr_choice(op, "combine", ("or", "and"))
    if x.kind == "counts":
      self.array(op, "direction", "int8", (x.shape[-1],), optional=True)
      d = op.arrays.get("direction")
      if d is not None and not np.all(np.abs(d) == 1):
        self.fail(op, "array 'direction'", "holds values other than -1 and 1")
    elif "direction" in op.arrays:
      self.fail(op, "array 'direction'", f"is for counts; its input is {x.kind}")
    window = tuple(self.attr_ints(op, "window", 2, 1))
    return dataclasses.replace(
      x, shape=(*self.window(op, x, window, "attribute 'window'"), x.shape[-1])
    )

  def _global_avg_pool(self, op, x):
    self.reads(op, x, "float", 3)
    return _Value("float", (x.shape[-1],))

  def _flatten(self, op, x):
    if not x.shape:
      self.fail(op, f"input {op.inputs[0]!r}", "has no axes")
    if x.kind == "bits":  # bits keep their channel axis: (H * W, C)
      return dataclasses.replace(x, shape=(math.prod(x.shape[:-1]), x.shape[-1]))
    return dataclasses.replace(x, shape=(math.prod(x.shape),))

  def _binarize(self, op, x):
    self.reads(op, x, "float")
    self.attr_number(op, "beta")
    return _Value("bits", x.shape, self.attr_choice(op, "mode", MODES))

  def _unpack(self, op, x):
    self.reads(op, x, "bits")
    self.attr_number(op, "beta")
    mode = self.attr_choice(op, "mode", MODES)
    if mode != x.mode:
      self.fail(op, "attribute 'mode'", f"{mode!r} differs from its input's {x.mode!r}")
    return _Value("float", x.shape)

  def _binary_conv(self, op, x):
    self.reads(op, x, "bits", 3)
    kh, kw = self.attr_ints(op, "kernel_size", 2, 1)
    o = self.binary_weights(op, x, kh * kw)
    return _Value("counts", (*self.window(op, x, (kh, kw), "attribute 'kernel_size'"), o))

  def _binary_dense(self, op, x):
    self.reads(op, x, "bits")
    return _Value("counts", (self.binary_weights(op, x, math.prod(x.shape[:-1])),))

  def _threshold(self, op, x):
    self.reads(op, x, "counts")
    c = x.shape[-1]
    self.array(op, "thresholds", "int32", (c,))
    self.array(op, "flip", "uint8", (-(-c // 8),))
    self.attr_number(op, "beta")
    return _Value("bits", x.shape, self.attr_choice(op, "mode", MODES))

  def _scale_shift(self, op, x):
    self.reads(op, x, "counts")
    for key in ("scale", "shift"):
      self.array(op, key, "float32", (x.shape[-1],))
    return _Value("float", x.shape)


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))
