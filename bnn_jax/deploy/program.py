"""An exported network as a Program of ops, and its file format (`.bnn`); numpy only.

An exported model is a `Program`: a short list of ops, each naming its inputs (earlier ops, or
"input", the normalized image). Values come in three kinds:

  float   float32 arrays [B, ...] (full-precision layers, the residual stream, the logits)
  bits    binary activations, packed 32 channels to a uint32 word along the last axis
          [B, ..., ceil(C / 32)] (channel c is bit c % 32 of word c // 32); bit 1 means x > 0,
          so the activation's value is beta * bit ("step") or beta * (2 bit - 1) ("sign")
  counts  int32 [B, ..., C], the integer accumulation of a binary layer

Ops (in -> out; arrays stored in the file; meaning):

  conv          float -> float   kernel f32 [kh,kw,I,O], bias f32 [O]   lax.conv_general_dilated
  dense         float -> float   kernel f32 [I,O], bias f32 [O]         x @ kernel + bias
  batch_norm    float -> float   mean, var, scale, bias f32 [C]         flax's eval formula
  relu, add     float -> float
  max_pool      any -> same      direction i8 [C] (counts, optional)    bits: OR (AND if beta < 0)
  global_avg_pool  float [H,W,C] -> float [C], the mean over H and W
  flatten       any -> same                                             NHWC order
  binarize      float -> bits                                           bit = x > 0
  unpack        bits -> float                                           beta * levels(bit)
  binary_conv   bits -> counts   weights u8: packbits of [O, kh*kw*I]   sum over the valid taps
  binary_dense  bits -> counts   weights u8: packbits of [O, I]           of levels(a) levels(w)
  threshold     counts -> bits   thresholds i32 [C], flip u8 (packbits) bit = (c > t) xor flip
  scale_shift   counts -> float  scale, shift f32 [C]                   c * scale + shift

A binary layer's weight bits are those of sign(alpha_c * beta) * sign(W) (bit 1 = +1, in
`np.packbits(..., bitorder="little")` order over [O, kh, kw, I] flattened), so that its real
output is |alpha_c * beta| * count: the scales and the BatchNorm that follows are folded into the
`threshold` or `scale_shift` op that consumes the counts. With {0, 1} ("step") activations
count = popcount(a AND w) - popcount(a AND NOT w); with {-1, +1} ("sign") activations the zero
padding is not a +-1 value, so padded taps are left out of the sum exactly.

File format, version 1 (little-endian):

  offset 0   8 bytes  magic b"BNNPACK\\n"
  offset 8   u32      format version (1)
  offset 12  u32      H, the byte length of the JSON header
  offset 16  u64      P, the byte length of the payload
  offset 24  u32      CRC-32 of the JSON header and the payload
  offset 28  u32      reserved, 0
  offset 32  H bytes  JSON header (UTF-8, space-padded so that 32 + H is a multiple of 8): input
                      shape, mean and std, output name, metadata, ops (kind, name, inputs,
                      output shape, attributes, and for each array its dtype, shape, offset in
                      the payload and nbytes)
  32 + H     P bytes  payload: the arrays, each at an 8-byte aligned offset
"""

import dataclasses
import json
import pathlib
import struct
import zlib
from typing import Any

import numpy as np

from bnn_jax.errors import InputError

MAGIC = b"BNNPACK\n"
VERSION = 1
PREAMBLE = struct.Struct("<8sIIQII")  # magic, version, header bytes, payload bytes, crc, 0
ALIGN = 8
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
ARRAY_DTYPES = ("float32", "int32", "int8", "uint8")


@dataclasses.dataclass
class Op:
  """One step of a program; its output value is called `name`.

  kind: one of OP_KINDS; inputs: names of earlier ops or "input"; shape: the output shape
  without the batch axis (logical channels for bits); attrs: JSON-able settings; arrays: numpy.
  """

  kind: str
  name: str
  inputs: tuple[str, ...]
  shape: tuple[int, ...]
  attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
  arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Program:
  """A deployable network: normalization of the uint8 input, then `ops`; `output` is the logits."""

  input_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  ops: list[Op]
  output: str
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

  def op(self, name: str) -> Op:
    for op in self.ops:
      if op.name == name:
        return op
    raise KeyError(name)

  @property
  def num_classes(self) -> int:
    return self.op(self.output).shape[-1]


# ----------------------------------------------------------------------------- file format


def to_bytes(program: Program) -> bytes:
  """Serializes `program` in the format described in this module's docstring."""
  payload, ops = bytearray(), []
  for op in program.ops:
    entries = {}
    for key, array in op.arrays.items():
      array = np.ascontiguousarray(array)
      if array.dtype.name not in ARRAY_DTYPES:
        raise ValueError(
          f"op {op.name} array {key} has dtype {array.dtype}; allowed {ARRAY_DTYPES}"
        )
      payload.extend(b"\0" * (-len(payload) % ALIGN))
      entries[key] = {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "offset": len(payload),
        "nbytes": array.nbytes,
      }
      payload.extend(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    ops.append(
      {
        "kind": op.kind,
        "name": op.name,
        "inputs": list(op.inputs),
        "shape": list(op.shape),
        "attrs": op.attrs,
        "arrays": entries,
      }
    )
  header = {
    "input_shape": list(program.input_shape),
    "mean": list(program.mean),
    "std": list(program.std),
    "output": program.output,
    "metadata": program.metadata,
    "ops": ops,
  }
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-(PREAMBLE.size + len(text)) % ALIGN)
  crc = zlib.crc32(bytes(payload), zlib.crc32(text))
  return PREAMBLE.pack(MAGIC, VERSION, len(text), len(payload), crc, 0) + text + bytes(payload)


def from_bytes(data: bytes, source: str = "model file") -> Program:
  """Parses a file's bytes; anything malformed raises InputError naming what is wrong."""
  if len(data) < PREAMBLE.size:
    raise InputError(f"{source} is truncated: {len(data)} bytes, shorter than the 32-byte header")
  magic, version, header_bytes, payload_bytes, crc, _ = PREAMBLE.unpack_from(data)
  if magic != MAGIC:
    raise InputError(
      f"{source} is not a bnn_jax packed model (magic {magic!r}, expected {MAGIC!r})"
    )
  if version != VERSION:
    raise InputError(f"{source} has format version {version}; this bnn_jax reads version {VERSION}")
  expected = PREAMBLE.size + header_bytes + payload_bytes
  if len(data) != expected:
    raise InputError(
      f"{source} is truncated or has trailing bytes: its header promises {expected} bytes, the "
      f"file holds {len(data)}"
    )
  text = data[PREAMBLE.size : PREAMBLE.size + header_bytes]
  payload = data[PREAMBLE.size + header_bytes :]
  if zlib.crc32(payload, zlib.crc32(text)) != crc:
    raise InputError(f"{source} is corrupt: its CRC-32 does not match its contents")
  try:
    header = json.loads(text)
    ops = [_op_from_json(entry, payload) for entry in header["ops"]]
    program = Program(
      input_shape=tuple(header["input_shape"]),
      mean=tuple(header["mean"]),
      std=tuple(header["std"]),
      ops=ops,
      output=header["output"],
      metadata=header.get("metadata", {}),
    )
  except (ValueError, KeyError, TypeError) as e:
    if isinstance(e, InputError):
      raise
    raise InputError(f"{source} has a malformed header ({type(e).__name__}: {e})") from e
  check_program(program, source)
  return program


def _op_from_json(entry: dict, payload: bytes) -> Op:
  arrays = {}
  for key, spec in entry["arrays"].items():
    if spec["dtype"] not in ARRAY_DTYPES:
      raise InputError(f"op {entry['name']} array {key} has unknown dtype {spec['dtype']!r}")
    dtype = np.dtype(spec["dtype"]).newbyteorder("<")
    count = int(np.prod(spec["shape"], dtype=np.int64))
    start, nbytes = spec["offset"], spec["nbytes"]
    if nbytes != count * dtype.itemsize or start < 0 or start + nbytes > len(payload):
      raise InputError(
        f"op {entry['name']} array {key} (shape {spec['shape']}, {nbytes} bytes at {start}) "
        f"does not fit the {len(payload)}-byte payload"
      )
    arrays[key] = (
      np.frombuffer(payload, dtype, count, start)
      .reshape(spec["shape"])
      .astype(dtype.newbyteorder("="))
    )
  return Op(
    kind=entry["kind"],
    name=entry["name"],
    inputs=tuple(entry["inputs"]),
    shape=tuple(entry["shape"]),
    attrs=entry["attrs"],
    arrays=arrays,
  )


def check_program(program: Program, source: str = "program") -> None:
  """Raises InputError if an op has an unknown kind or reads a value not computed before it."""
  known = {"input"}
  for op in program.ops:
    if op.kind not in OP_KINDS:
      raise InputError(f"{source}: op {op.name!r} has unknown kind {op.kind!r}")
    missing = [i for i in op.inputs if i not in known]
    if missing:
      raise InputError(f"{source}: op {op.name!r} reads {missing[0]!r}, not computed before it")
    known.add(op.name)
  if program.output not in known:
    raise InputError(f"{source}: the output {program.output!r} is not an op")


def save(program: Program, path) -> int:
  """Writes `program` to `path`; returns the file's size in bytes."""
  data = to_bytes(program)
  pathlib.Path(path).write_bytes(data)
  return len(data)


def load(path) -> Program:
  """Reads a packed model file; a missing, truncated or corrupt file raises InputError."""
  path = pathlib.Path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise InputError(f"cannot read model file {path} ({e.strerror or e})") from e
  return from_bytes(data, f"model file {path}")
