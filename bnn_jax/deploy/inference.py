"""Runs an exported binary network (`bnn_jax.deploy.program`) on packed bits: jax and numpy only.

Binary activations are packed 32 channels to a uint32 word along the last axis (channel c is bit
c % 32 of word c // 32). A binary conv is one unrolled sum over taps and words of
popcount(a AND w): with {0, 1} ("step") activations count = 2 popcount(a AND w+) - popcount(a),
zero padding included; with {-1, +1} ("sign") activations padded taps are left out of the sum with
per-position constants computed at load. No training code: `Engine(load(path)).logits(images)`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from bnn_jax.deploy.checks import check_program  # noqa: F401 (the API)
from bnn_jax.deploy.program import Op, Program, load, save  # noqa: F401 (the API)
from bnn_jax.errors import InputError

WORD_BITS = 32


# ----------------------------------------------------------------------------- bits


def words(channels: int) -> int:
  """Number of uint32 words that hold `channels` bits."""
  return -(-channels // WORD_BITS)


def pack_bits(bits: jax.Array) -> jax.Array:
  """bool [..., C] -> uint32 [..., ceil(C / 32)], channel c at bit c % 32 of word c // 32."""
  c = bits.shape[-1]
  bits = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, words(c) * WORD_BITS - c)])
  bits = bits.reshape(*bits.shape[:-1], words(c), WORD_BITS).astype(jnp.uint32)
  return jnp.sum(bits << jnp.arange(WORD_BITS, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def unpack_bits(packed: jax.Array, channels: int) -> jax.Array:
  """uint32 [..., W] -> uint8 {0, 1} [..., channels]; the inverse of `pack_bits`."""
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  bits = (packed[..., None] >> shifts) & 1
  return bits.reshape(*packed.shape[:-1], -1)[..., :channels].astype(jnp.uint8)


def _words_from_file_bits(packed: np.ndarray, rows: int, groups: int, channels: int) -> np.ndarray:
  """File layout (packbits of [rows, groups * channels]) -> uint32 [groups * words, rows]."""
  bits = np.unpackbits(packed, count=rows * groups * channels, bitorder="little")
  bits = bits.reshape(rows, groups, channels)
  bits = np.pad(bits, ((0, 0), (0, 0), (0, words(channels) * WORD_BITS - channels)))
  bits = bits.reshape(rows, groups, words(channels), WORD_BITS).astype(np.uint64)
  w = (bits << np.arange(WORD_BITS, dtype=np.uint64)).sum(-1).astype(np.uint32)
  return w.reshape(rows, -1).T.copy()


def _popcount(x):
  return lax.population_count(x).astype(jnp.int32)


# ----------------------------------------------------------------------------- kernels


def _window_reduce(x, window, strides, padding, combine, pad_value):
  """Combines the window positions of [B, H, W, C] by slicing: XLA fuses it into one loop."""
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=pad_value)
  _, h, w, _ = x.shape
  out_h = (h - window[0]) // strides[0] + 1
  out_w = (w - window[1]) // strides[1] + 1
  out = None
  for dy in range(window[0]):
    for dx in range(window[1]):
      end = (x.shape[0], dy + (out_h - 1) * strides[0] + 1, dx + (out_w - 1) * strides[1] + 1)
      part = lax.slice(x, (0, dy, dx, 0), (*end, x.shape[3]), (1, *strides, 1))
      out = part if out is None else combine(out, part)
  return out


def popcount_conv(x, w, window, strides, padding):
  """sum over taps and words of popcount(x AND w), and of popcount(x).

  x: uint32 [B, H, W, Iw]; w: uint32 [kh * kw * Iw, O] (tap-major). Returns int32
  [B, H', W', O] and [B, H', W', 1]. Written as one unrolled sum so that XLA emits a single
  loop over the outputs, vectorized along O (vpopcntd where the CPU has it).
  """
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  batch, h, width, iw = x.shape
  out_h = (h - window[0]) // strides[0] + 1
  out_w = (width - window[1]) // strides[1] + 1
  matches, ones = 0, 0
  k = 0
  for dy in range(window[0]):
    for dx in range(window[1]):
      end = (batch, dy + (out_h - 1) * strides[0] + 1, dx + (out_w - 1) * strides[1] + 1, iw)
      tap = lax.slice(x, (0, dy, dx, 0), end, (1, *strides, 1))
      for j in range(iw):
        word = tap[..., j : j + 1]
        matches = matches + _popcount(word & w[k])
        ones = ones + _popcount(word)
        k += 1
  return matches, ones


def popcount_dense(x, w):
  """x: uint32 [B, Kw]; w: uint32 [Kw, O] -> (sum popcount(x AND w) [B, O], popcount(x) [B, 1])."""
  matches, ones = 0, 0
  for k in range(x.shape[1]):
    word = x[:, k : k + 1]
    matches = matches + _popcount(word & w[k])
    ones = ones + _popcount(word)
  return matches, ones


def _counts(matches, ones, p, mode):
  # popcount(a) is the same for every output channel: computed once per position, not per lane.
  ones = _materialize(ones, p["runtime_true"])
  if mode == "step":  # a in {0, 1}, w in {-1, +1}: sum a w = 2 popcount(a & w+) - popcount(a)
    counts = 2 * matches - ones
  else:  # a, w in {-1, +1} over the valid taps only: 4 P - 2 A - 2 popcount(valid & w+) + n_valid
    counts = 4 * matches - 2 * ones - p["twice_weight_ones"] + p["valid"]
  return _materialize(counts, p["runtime_true"])


def _materialize(x, runtime_true):
  """x, computed into a buffer of its own: XLA cannot fuse through a conditional on a runtime
  predicate (it drops optimization_barrier before fusing). Fused into the pooling or the bit
  packing after it, the popcount loop would be recomputed per window position and lose its
  vectorization along the output channels."""
  return lax.cond(runtime_true, lambda v: v, lambda v: -v, x)


def _sign_mode_constants(w_bits, in_hw, window, strides, padding):
  """For "sign" activations: 2 * (ones of w over valid taps) and n_valid, per output position.

  w_bits: uint8 {0, 1} [O, kh, kw, I]. Returns int32 [H', W', O] arrays (added to the counts).
  """
  o, kh, kw, i = w_bits.shape
  h, w = in_hw
  out_h = (h + sum(padding[0]) - kh) // strides[0] + 1
  out_w = (w + sum(padding[1]) - kw) // strides[1] + 1
  ys = np.arange(out_h)[:, None] * strides[0] - padding[0][0] + np.arange(kh)[None]
  xs = np.arange(out_w)[:, None] * strides[1] - padding[1][0] + np.arange(kw)[None]
  valid = ((ys >= 0) & (ys < h))[:, None, :, None] & ((xs >= 0) & (xs < w))[None, :, None, :]
  tap_ones = w_bits.sum(-1, dtype=np.int64)  # [O, kh, kw]
  weight_ones = np.einsum("yxab,oab->yxo", valid.astype(np.int64), tap_ones)
  n_valid = valid.sum((2, 3))[..., None] * i
  return (2 * weight_ones).astype(np.int32), np.broadcast_to(n_valid, weight_ones.shape).astype(
    np.int32
  )


def _prepare(program: Program) -> dict[str, dict[str, jax.Array]]:
  """The ops' arrays in the layouts the kernels use (packed words, int thresholds, ...)."""
  shapes = {"input": tuple(program.input_shape)}
  params = {}
  for op in program.ops:
    p, a = {}, op.arrays
    if op.kind in ("conv", "dense", "batch_norm", "scale_shift"):
      p = {k: jnp.asarray(v, jnp.float32) for k, v in a.items()}
    elif op.kind == "max_pool" and "direction" in a:
      p = {"direction": jnp.asarray(a["direction"], jnp.int32)}
    elif op.kind == "threshold":
      c = op.shape[-1]
      flip = np.unpackbits(a["flip"], count=c, bitorder="little").astype(bool)
      p = {"thresholds": jnp.asarray(a["thresholds"]), "flip": jnp.asarray(flip)}
    elif op.kind in ("binary_conv", "binary_dense"):
      in_shape = shapes[op.inputs[0]]
      o, i = op.attrs["out_features"], in_shape[-1]
      taps = int(np.prod(op.attrs.get("kernel_size", in_shape[:-1]), dtype=np.int64))
      p = {"w": jnp.asarray(_words_from_file_bits(a["weights"], o, taps, i))}
      p["runtime_true"] = jnp.asarray(True)
      if op.attrs["mode"] == "sign":
        bits = np.unpackbits(a["weights"], count=o * taps * i, bitorder="little")
        if op.kind == "binary_conv":
          bits = bits.reshape(o, *op.attrs["kernel_size"], i)
          ones, valid = _sign_mode_constants(
            bits, in_shape[:2], op.attrs["kernel_size"], op.attrs["strides"], op.attrs["padding"]
          )
        else:
          ones = 2 * bits.reshape(o, -1).sum(-1).astype(np.int32)
          valid = np.full((o,), taps * i, np.int32)
        p.update(twice_weight_ones=jnp.asarray(ones), valid=jnp.asarray(valid))
    params[op.name] = p
    shapes[op.name] = tuple(op.shape)
  return params


def _apply(op: Op, p, shapes, *args):
  """Runs one op on its input values (jax arrays)."""
  x = args[0] if args else None
  attrs = op.attrs
  if op.kind == "conv":
    y = lax.conv_general_dilated(
      x,
      p["kernel"],
      window_strides=tuple(attrs["strides"]),
      padding=[tuple(pair) for pair in attrs["padding"]],
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return y + p["bias"] if "bias" in p else y
  if op.kind == "dense":
    y = x @ p["kernel"]
    return y + p["bias"] if "bias" in p else y
  if op.kind == "batch_norm":  # exactly flax.nnx.BatchNorm's eval-mode arithmetic
    y = x - p["mean"]
    mul = lax.rsqrt(p["var"] + attrs["epsilon"])
    mul *= p["scale"]
    y *= mul
    return y + p["bias"]
  if op.kind == "relu":
    return jax.nn.relu(x)
  if op.kind == "add":
    return x + args[1]
  if op.kind == "flatten":  # bits keep their word axis: [B, H * W, words]
    return (
      x.reshape(x.shape[0], -1) if x.dtype != jnp.uint32 else x.reshape(x.shape[0], -1, x.shape[-1])
    )
  if op.kind == "max_pool":
    return _max_pool(op, p, x)
  if op.kind == "global_avg_pool":
    return jnp.mean(x, axis=(1, 2))
  if op.kind == "binarize":
    return pack_bits(x > 0)
  if op.kind == "unpack":
    bits = unpack_bits(x, shapes[op.inputs[0]][-1]).reshape(x.shape[0], *op.shape)
    levels = bits.astype(jnp.float32) if attrs["mode"] == "step" else 2.0 * bits - 1.0
    return jnp.float32(attrs["beta"]) * levels
  if op.kind == "binary_conv":
    matches, ones = popcount_conv(
      x,
      p["w"],
      tuple(attrs["kernel_size"]),
      tuple(attrs["strides"]),
      [tuple(pair) for pair in attrs["padding"]],
    )
    return _counts(matches, ones, p, attrs["mode"])
  if op.kind == "binary_dense":
    matches, ones = popcount_dense(x.reshape(x.shape[0], -1), p["w"])
    return _counts(matches, ones, p, attrs["mode"])
  if op.kind == "threshold":
    return pack_bits((x > p["thresholds"]) ^ p["flip"])
  if op.kind == "scale_shift":
    return x.astype(jnp.float32) * p["scale"] + p["shift"]
  raise InputError(f"op {op.name!r} has unknown kind {op.kind!r}")


def _max_pool(op, p, x):
  attrs = op.attrs
  window, strides = tuple(attrs["window"]), tuple(attrs["strides"])
  padding = [tuple(pair) for pair in attrs["padding"]]
  if x.dtype == jnp.uint32:  # bits: the max of {0, beta} (or {-beta, beta}) is OR if beta > 0
    if attrs["combine"] == "or":
      return _window_reduce(x, window, strides, padding, jnp.bitwise_or, 0)
    return _window_reduce(x, window, strides, padding, jnp.bitwise_and, np.uint32(0xFFFFFFFF))
  if x.dtype == jnp.int32:  # counts: max of direction * c, where the real scale is negative
    d = p.get("direction")
    x = x if d is None else x * d
    y = _window_reduce(x, window, strides, padding, jnp.maximum, np.iinfo(np.int32).min)
    return y if d is None else y * d
  return _window_reduce(x, window, strides, padding, jnp.maximum, -jnp.inf)


class Engine:
  """Runs a Program with jax: `logits(uint8 images)`, or `run` for any range of its ops.

  engine = Engine(inference.load("model.bnn")); engine.logits(images)  # [B, classes] float32
  """

  def __init__(self, program: Program):
    check_program(program)
    self.program = program
    self.params = _prepare(program)
    self.shapes = {"input": tuple(program.input_shape)}
    self.shapes.update({op.name: tuple(op.shape) for op in program.ops})
    self._jitted = {}
    mean = np.asarray(program.mean, np.float32)
    std = np.asarray(program.std, np.float32)
    self._normalize = jax.jit(lambda images: (images.astype(jnp.float32) / 255.0 - mean) / std)

  def normalize(self, images) -> jax.Array:
    """uint8 [B, H, W(, C)] -> float32 normalized as in training (in_memory.normalize)."""
    images = jnp.asarray(images)
    if images.ndim == 3:
      images = images[..., None]
    expected = tuple(self.program.input_shape)
    if tuple(images.shape[1:]) != expected:
      raise InputError(f"images have shape {tuple(images.shape[1:])}; this model takes {expected}")
    return self._normalize(images)

  def _function(self, start: int, stop: int, collect: bool):
    key = (start, stop, collect)
    if key not in self._jitted:
      ops = self.program.ops[start:stop]

      def run(params, feed):
        values = dict(feed)
        for op in ops:
          values[op.name] = _apply(
            op, params[op.name], self.shapes, *(values[i] for i in op.inputs)
          )
        return values if collect else values[ops[-1].name]

      self._jitted[key] = jax.jit(run)
    return self._jitted[key]

  def run(
    self,
    feed: dict[str, jax.Array],
    *,
    start: str | None = None,
    stop: str | None = None,
    collect: bool = False,
  ):
    """Runs the ops from `start` through `stop` (names, inclusive; default all) on `feed`.

    feed: the values the range reads, e.g. {"input": normalized images}. Returns the last op's
    value, or with collect=True every value by name (bits packed, counts int32).
    """
    names = [op.name for op in self.program.ops]
    first = names.index(start) if start else 0
    last = names.index(stop) + 1 if stop else len(names)
    return self._function(first, last, collect)(self.params, feed)

  def logits(self, images) -> jax.Array:
    """uint8 images [B, H, W(, C)] -> float32 logits [B, num_classes]."""
    return self.run({"input": self.normalize(images)})

  def bits(self, name: str, value: jax.Array) -> np.ndarray:
    """A packed bits value of op `name` -> uint8 {0, 1} [B, *shape]."""
    bits = unpack_bits(value, self.shapes[name][-1])
    return np.asarray(bits).reshape(value.shape[0], *self.shapes[name])


def binary_ops(program: Program) -> Sequence[Op]:
  """The ops that compute on bits and counts: from the first binary layer to the last."""
  kinds = ("binary_conv", "binary_dense", "threshold")
  idx = [i for i, op in enumerate(program.ops) if op.kind in kinds]
  if not idx:
    return []
  last = idx[-1]
  # include pooling of counts right after the last binary layer
  while last + 1 < len(program.ops) and program.ops[last + 1].kind == "max_pool":
    last += 1
  return program.ops[idx[0] : last + 1]
