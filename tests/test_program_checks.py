""".bnn files built by hand with a valid CRC: every declared array and shape is checked at load.

Each damaged file would pass the CRC; before the checks, `load` accepted them and the engine
crashed, computed wrong logits or tried to allocate sizes read from the header.
"""

import json
import math
import re
import zlib

import numpy as np
import pytest

from bnn_jax.deploy import inference
from bnn_jax.deploy.program import ALIGN, PREAMBLE, Op, Program, load, to_bytes
from bnn_jax.errors import InputError


def tiny_program() -> Program:
  """conv -> batch_norm -> binarize -> binary_conv -> threshold -> max_pool -> flatten ->
  binary_dense -> scale_shift -> dense: every value kind, on 6x6x3 images, 4 classes."""
  rng = np.random.default_rng(0)
  f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)
  bits = lambda n: rng.integers(0, 256, -(-n // 8), dtype=np.uint8)
  same = {"strides": [1, 1], "padding": [[1, 1], [1, 1]]}
  ops = [
    Op("conv", "conv0", ("input",), (6, 6, 8), same, {"kernel": f32(3, 3, 3, 8), "bias": f32(8)}),
    Op(
      "batch_norm",
      "bn0",
      ("conv0",),
      (6, 6, 8),
      {"epsilon": 1e-5},
      {"mean": f32(8), "var": np.abs(f32(8)) + 1, "scale": f32(8), "bias": f32(8)},
    ),
    Op("binarize", "act0", ("bn0",), (6, 6, 8), {"mode": "step", "beta": 1.0}),
    Op(
      "binary_conv",
      "conv1",
      ("act0",),
      (6, 6, 16),
      {**same, "kernel_size": [3, 3], "in_features": 8, "out_features": 16, "mode": "step"},
      {"weights": bits(16 * 3 * 3 * 8)},
    ),
    Op(
      "threshold",
      "act1",
      ("conv1",),
      (6, 6, 16),
      {"mode": "step", "beta": 1.0},
      {"thresholds": rng.integers(-5, 5, 16).astype(np.int32), "flip": bits(16)},
    ),
    Op(
      "max_pool",
      "pool1",
      ("act1",),
      (3, 3, 16),
      {"window": [2, 2], "strides": [2, 2], "padding": [[0, 0], [0, 0]], "combine": "or"},
    ),
    Op("flatten", "flatten", ("pool1",), (9, 16)),
    Op(
      "binary_dense",
      "fc",
      ("flatten",),
      (10,),
      {"in_features": 144, "out_features": 10, "mode": "step"},
      {"weights": bits(10 * 144)},
    ),
    Op("scale_shift", "fc.scale", ("fc",), (10,), {}, {"scale": f32(10), "shift": f32(10)}),
    Op("dense", "head", ("fc.scale",), (4,), {}, {"kernel": f32(10, 4), "bias": f32(4)}),
  ]
  return Program((6, 6, 3), (0.5,) * 3, (0.25,) * 3, ops, "head")


def with_header(data: bytes, change) -> bytes:
  """The file `data` with change(header dict) applied and its CRC made valid again."""
  _, version, header_bytes, payload_bytes, _, _ = PREAMBLE.unpack_from(data)
  header = json.loads(data[PREAMBLE.size : PREAMBLE.size + header_bytes])
  payload = data[PREAMBLE.size + header_bytes :]
  change(header)
  text = json.dumps(header, separators=(",", ":")).encode()
  text += b" " * (-(PREAMBLE.size + len(text)) % ALIGN)
  crc = zlib.crc32(payload, zlib.crc32(text))
  return PREAMBLE.pack(b"BNNPACK\n", version, len(text), payload_bytes, crc, 0) + text + payload


def op_entry(header: dict, name: str) -> dict:
  return next(op for op in header["ops"] if op["name"] == name)


def assert_refused(tmp_path, data: bytes, message: str):
  path = tmp_path / "hand_built.bnn"
  path.write_bytes(data)
  with pytest.raises(InputError, match=re.escape(message)) as e:
    inference.Engine(load(path))
  assert str(path) in str(e.value)


def test_the_hand_built_program_is_valid_and_runs(tmp_path):
  path = tmp_path / "tiny.bnn"
  path.write_bytes(to_bytes(tiny_program()))
  images = np.random.default_rng(1).integers(0, 256, (2, 6, 6, 3), dtype=np.uint8)
  logits = inference.Engine(load(path)).logits(images)
  assert logits.shape == (2, 4) and np.all(np.isfinite(np.asarray(logits)))


# ----------------------------------------------------------------------------- arrays


def test_thresholds_declared_float32_are_refused(tmp_path):
  program = tiny_program()
  program.op("act1").arrays["thresholds"] = (
    program.op("act1").arrays["thresholds"].astype(np.float32)
  )
  assert_refused(
    tmp_path,
    to_bytes(program),
    "op 'act1' (threshold) array 'thresholds' has dtype float32; it must be int32",
  )


def test_a_huge_declared_array_shape_is_refused(tmp_path):
  def huge(header):  # 2**64 elements: an int64 product would wrap around to 0
    op_entry(header, "conv1")["arrays"]["weights"]["shape"] = [2**32, 2**32]

  assert_refused(
    tmp_path,
    with_header(to_bytes(tiny_program()), huge),
    f"op 'conv1' array 'weights' nbytes 144 does not fit the dtype and shape uint8 "
    f"[{2**32}, {2**32}] ({2**64} bytes)",
  )


def test_nbytes_that_disagree_with_the_shape_are_refused(tmp_path):
  def more(header):
    op_entry(header, "conv0")["arrays"]["kernel"]["nbytes"] += 4

  assert_refused(
    tmp_path,
    with_header(to_bytes(tiny_program()), more),
    "op 'conv0' array 'kernel' nbytes 868 does not fit the dtype and shape float32 "
    "[3, 3, 3, 8] (864 bytes)",
  )


def test_weights_with_fewer_bits_than_the_layer_needs_are_refused(tmp_path):
  program = tiny_program()
  program.op("conv1").arrays["weights"] = program.op("conv1").arrays["weights"][:100]
  assert_refused(
    tmp_path,
    to_bytes(program),
    "op 'conv1' (binary_conv) array 'weights' has shape [100]; it must be [144]",
  )


def test_offsets_outside_the_payload_or_unaligned_are_refused(tmp_path):
  data = to_bytes(tiny_program())

  def far(header):
    op_entry(header, "head")["arrays"]["bias"]["offset"] = 2**40

  def unaligned(header):
    op_entry(header, "conv0")["arrays"]["bias"]["offset"] += 4

  assert_refused(tmp_path, with_header(data, far), "op 'head' array 'bias' (16 bytes at 1099511")
  assert_refused(tmp_path, with_header(data, unaligned), "is not a multiple of 8")


def test_a_dense_kernel_that_does_not_fit_its_input_is_refused(tmp_path):
  program = tiny_program()
  program.op("head").arrays["kernel"] = np.zeros((11, 4), np.float32)
  assert_refused(
    tmp_path,
    to_bytes(program),
    "op 'head' (dense) array 'kernel' has shape [11, 4]; it must be [10, 4]",
  )


# ----------------------------------------------------------------------------- shapes and graph


def test_an_output_shape_that_does_not_follow_from_the_inputs_is_refused(tmp_path):
  program = tiny_program()
  program.op("conv1").shape = (6, 6, 17)
  assert_refused(
    tmp_path,
    to_bytes(program),
    "op 'conv1' (binary_conv) shape [6, 6, 17] does not follow from its input and attributes: "
    "expected [6, 6, 16]",
  )


def test_attributes_that_promise_huge_outputs_are_refused(tmp_path):
  def huge(header):
    conv1 = op_entry(header, "conv1")
    conv1["attrs"]["out_features"] = 2**31
    conv1["shape"] = [6, 6, 2**31]

  assert_refused(
    tmp_path,
    with_header(to_bytes(tiny_program()), huge),
    "op 'conv1' (binary_conv) attributes make its weight words 4608.0 GiB, more than the 1 GiB "
    "the engine allows one op",
  )


def test_a_huge_input_shape_is_refused(tmp_path):
  def huge(header):
    header["input_shape"] = [40000, 40000, 3]

  assert_refused(
    tmp_path,
    with_header(to_bytes(tiny_program()), huge),
    "input_shape [40000, 40000, 3] makes one image 17.9 GiB as float32, more than the 1 GiB",
  )


def test_a_reference_to_a_later_op_is_refused(tmp_path):
  program = tiny_program()
  program.op("conv0").inputs = ("bn0",)
  assert_refused(tmp_path, to_bytes(program), "op 'conv0' reads 'bn0', not computed before it")


@pytest.mark.parametrize(
  "change,message",
  [
    (
      lambda p: setattr(p.op("conv1"), "attrs", {**p.op("conv1").attrs, "mode": "sign"}),
      "op 'conv1' (binary_conv) attribute 'mode' 'sign' differs from its input's 'step'",
    ),
    (
      lambda p: setattr(p.op("conv1"), "attrs", {**p.op("conv1").attrs, "in_features": 9}),
      "op 'conv1' (binary_conv) attribute 'in_features' 9 does not match its input 'act0'",
    ),
    (
      lambda p: setattr(p.op("conv1"), "inputs", ("bn0",)),
      "op 'conv1' (binary_conv) input 'bn0' is float; this op reads bits",
    ),
    (
      lambda p: setattr(p.op("pool1"), "attrs", {**p.op("pool1").attrs, "padding": [[9, 9]]}),
      "op 'pool1' (max_pool) attribute 'padding' [[9, 9]] is not [[top, bottom], [left, right]]",
    ),
    (
      lambda p: setattr(p, "output", "act1"),
      "the output 'act1' is bits of shape [6, 6, 16]; it must be float logits [num_classes]",
    ),
  ],
  ids=["mode", "in_features", "value_kind", "padding", "output_kind"],
)
def test_inconsistent_attributes_and_kinds_are_refused(tmp_path, change, message):
  program = tiny_program()
  change(program)
  assert_refused(tmp_path, to_bytes(program), message)


def test_the_engine_checks_a_program_made_in_memory_too():
  program = tiny_program()
  program.op("act1").arrays["flip"] = np.zeros(3, np.uint8)
  with pytest.raises(InputError, match=r"op 'act1' \(threshold\) array 'flip' has shape \[3\]"):
    inference.Engine(program)


def test_activation_memory_is_counted_over_all_ops():
  # 1 GiB of activations: a chain of ReLUs on an input just under the limit on its own.
  side = math.isqrt((1 << 30) // (4 * 8)) - 1
  ops = [
    Op("relu", f"relu{i}", ("input" if i == 0 else f"relu{i - 1}",), (side, side, 8))
    for i in range(2)
  ]
  ops.append(Op("global_avg_pool", "pool", ("relu1",), (8,)))
  program = Program((side, side, 8), (0.0,) * 8, (1.0,) * 8, ops, "pool")
  with pytest.raises(InputError, match=r"op 'relu0' \(relu\) shape .* brings the activations"):
    inference.check_program(program)
