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

A CRC only proves that the file is the one written. Loading also checks what the header claims
(here, and `check_program` in bnn_jax/deploy/checks.py): every array's dtype, shape, byte count
and place in the payload, every op's inputs, attributes and arrays against what its kind needs,
its output shape against the one its inputs and attributes give, and the engine's memory for one
image, all before any allocation.
"""

import dataclasses
import json
import math
import pathlib
import struct
import zlib
from typing import Any

import numpy as np

from bnn_jax.deploy.checks import check_program, is_int
from bnn_jax.errors import InputError

MAGIC = b"BNNPACK\n"
VERSION = 1
PREAMBLE = struct.Struct("<8sIIQII")  # magic, version, header bytes, payload bytes, crc, 0
ALIGN = 8
ARRAY_DTYPES = ("float32", "int32", "int8", "uint8")


@dataclasses.dataclass
class Op:
  """One step of a program; its output value is called `name`.

  kind: one of checks.OP_KINDS; inputs: names of earlier ops or "input"; shape: the output shape
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
  """Parses a file's bytes; anything malformed raises InputError naming what is wrong.

  Every array's declared dtype, shape, offset and byte count is checked against the payload
  before an array is made, and the program against what each op needs (`check_program`) before
  anything is sized from the header: a hostile header gets one sentence, not an allocation.
  """
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
  except ValueError as e:
    raise InputError(f"{source} has a malformed header ({type(e).__name__}: {e})") from e
  _check_header(header, len(payload), source)
  program = Program(
    input_shape=tuple(header["input_shape"]),
    mean=tuple(header["mean"]),
    std=tuple(header["std"]),
    ops=[_op_from_json(entry, payload) for entry in header["ops"]],
    output=header["output"],
    metadata=header.get("metadata", {}),
  )
  check_program(program, source)
  return program


def _check_header(header, payload_bytes: int, source: str) -> None:
  """Types of the JSON header's fields, and every array spec against the payload."""

  def fail(where: str, what: str):
    raise InputError(f"{source}: {where} {what}")

  if not isinstance(header, dict):
    fail("the header", f"is a JSON {type(header).__name__}, not an object")
  for key, kind in (("input_shape", list), ("mean", list), ("std", list), ("ops", list)):
    if not isinstance(header.get(key), kind):
      fail(f"the header field {key!r}", "is missing or not a list")
  if not isinstance(header.get("output"), str):
    fail("the header field 'output'", "is missing or not a string")
  if not isinstance(header.get("metadata", {}), dict):
    fail("the header field 'metadata'", "is not an object")
  for i, entry in enumerate(header["ops"]):
    if not isinstance(entry, dict):
      fail(f"op #{i}", "is not a JSON object")
    name = entry.get("name")
    where = f"op {name!r}" if isinstance(name, str) else f"op #{i}"
    for key, kind in (
      ("kind", str),
      ("name", str),
      ("inputs", list),
      ("shape", list),
      ("attrs", dict),
      ("arrays", dict),
    ):
      if not isinstance(entry.get(key), kind):
        fail(where, f"field {key!r} is missing or not a {kind.__name__}")
    if not all(isinstance(x, str) for x in entry["inputs"]):
      fail(where, f"field 'inputs' {entry['inputs']!r} is not a list of op names")
    if not all(is_int(d) and d >= 0 for d in entry["shape"]):
      fail(where, f"field 'shape' {entry['shape']!r} is not a list of integers >= 0")
    for key, spec in entry["arrays"].items():
      _check_array_spec(spec, payload_bytes, f"{where} array {key!r}", fail)


def _check_array_spec(spec, payload_bytes: int, where: str, fail) -> None:
  """dtype, shape, 8-byte aligned offset and byte count of one array, in Python integers."""
  if not isinstance(spec, dict):
    fail(where, "is not a JSON object")
  dtype, shape = spec.get("dtype"), spec.get("shape")
  if dtype not in ARRAY_DTYPES:
    fail(where, f"has unknown dtype {dtype!r}; allowed {ARRAY_DTYPES}")
  if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
    fail(where, f"shape {shape!r} is not a list of integers >= 0")
  offset, nbytes = spec.get("offset"), spec.get("nbytes")
  for key, value in (("offset", offset), ("nbytes", nbytes)):
    if not is_int(value) or value < 0:
      fail(where, f"{key} {value!r} is not an integer >= 0")
  need = math.prod(shape) * np.dtype(dtype).itemsize  # Python integers: no overflow
  if nbytes != need:
    fail(where, f"nbytes {nbytes} does not fit the dtype and shape {dtype} {shape} ({need} bytes)")
  if offset % ALIGN:
    fail(where, f"offset {offset} is not a multiple of {ALIGN}")
  if offset + nbytes > payload_bytes:
    fail(where, f"({nbytes} bytes at {offset}) does not fit the {payload_bytes}-byte payload")


def _op_from_json(entry: dict, payload: bytes) -> Op:
  """An Op from its checked header entry; its arrays are copied out of the payload."""
  arrays = {}
  for key, spec in entry["arrays"].items():
    dtype = np.dtype(spec["dtype"]).newbyteorder("<")
    count = math.prod(spec["shape"])
    arrays[key] = (
      np.frombuffer(payload, dtype, count, spec["offset"])
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
