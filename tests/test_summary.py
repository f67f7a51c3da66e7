"""Summary: sizes and multiply-accumulates per layer and in total, against the paper's figures."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from bnn_jax import layers, models
from bnn_jax.deploy import lowering, summary
from bnn_jax.deploy.program import ALIGN, PREAMBLE, to_bytes

MIB = 2**20
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _model(config, name, binary=True, image_shape=(32, 32, 3), num_classes=10):
  config.model.name = name
  config.model.binary = binary
  config.model.width = 1.0
  return models.create_model(config, num_classes, image_shape, nnx.Rngs(0))


def _weights_of(model) -> tuple[int, int]:
  """(binary, float) conv and dense weights and dense biases, counted from the model's own
  layers (BatchNorm and scales aside, as the published figures count), not from the Program."""
  binary = full = 0
  for _, node in nnx.iter_graph(model):
    if isinstance(node, layers.BinaryConv | layers.BinaryDense):
      binary += node.kernel[...].size
    elif isinstance(node, nnx.Conv | nnx.Linear):
      full += node.kernel[...].size + (0 if node.bias is None else node.bias[...].size)
  return binary, full


def test_vgg_small_on_cifar_is_20x_smaller_as_published(test_config):
  model = _model(test_config, "vgg_small")
  s = summary.of_model(model, (32, 32, 3))
  binary_weights, float_weights = _weights_of(model)
  assert binary_weights + float_weights == 4_656_522  # the published count
  assert s.weights_float32_bytes == 4 * (binary_weights + float_weights)  # 17.76 MiB
  assert s.weights_deployed_bytes == binary_weights // 8 + 4 * float_weights  # 0.871 MiB
  assert s.deployed_bytes == 923_832  # README's table: with thresholds and folded BatchNorm
  assert round(s.weights_float32_bytes / MIB, 1) == 17.8
  assert round(s.weights_deployed_bytes / MIB, 2) == 0.87
  # BatchNorm folded into thresholds and affine terms adds about 1 %.
  assert 0 < s.deployed_bytes - s.weights_deployed_bytes < 0.015 * s.deployed_bytes
  assert 19.5 < s.compression < 21
  spatial = [32, 16, 16, 8, 8]
  channels = [128, 128, 256, 256, 512, 512]
  expected_binary_macs = sum(
    h * h * 9 * cin * cout for h, cin, cout in zip(spatial, channels, channels[1:])
  )
  assert s.binary_macs == expected_binary_macs == 603_979_776
  assert s.float_macs == 32 * 32 * 27 * 128 + 8192 * 10 == 3_620_864
  assert 0.99 < s.binary_mac_share < 1


@pytest.mark.parametrize(
  "name,float32_mib,deployed_mib",
  [
    ("resnet18", 44.6, 3.96),
    # Slow: AlexNet's 62 M parameters are created and initialized, about 8 s.
    pytest.param("alexnet", 238, 22.7, marks=pytest.mark.slow),
  ],
)
def test_imagenet_models_match_the_papers_sizes(test_config, name, float32_mib, deployed_mib):
  s = summary.of_model(
    _model(test_config, name, image_shape=(224, 224, 3), num_classes=1000), (224, 224, 3)
  )
  assert s.weights_float32_bytes / MIB == pytest.approx(float32_mib, rel=0.003)
  assert s.weights_deployed_bytes / MIB == pytest.approx(deployed_mib, rel=0.003)


def test_float_model_is_not_compressed_and_has_no_binary_macs(test_config):
  s = summary.of_model(_model(test_config, "vgg_small", binary=False), (32, 32, 3))
  assert s.compression == 1.0 and s.binary_macs == 0
  assert s.deployed_bytes == s.float32_bytes


def test_rows_are_the_programs_ops_and_sizes_are_its_arrays(test_config):
  model = _model(test_config, "vgg_small", image_shape=(16, 16, 1))
  program = lowering.lower(model, (16, 16, 1))
  s = summary.summarize(program)
  assert [r.name for r in s.rows] == [op.name for op in program.ops]
  for row, op in zip(s.rows, program.ops):
    assert row.nbytes == sum(a.nbytes for a in op.arrays.values())
    assert row.output_shape == op.shape
  conv1 = s.rows[[r.name for r in s.rows].index("conv1")]
  assert (conv1.input_bits, conv1.weight_bits) == ("1", "1")
  assert conv1.params_1bit == 9 * 128 * 128 and conv1.nbytes == 9 * 128 * 128 // 8
  act2 = s.rows[[r.name for r in s.rows].index("act2")]
  assert act2.folds == ("bn2",) and act2.params_32bit == 128  # one int32 threshold a channel
  table = s.table()
  for op in program.ops:
    assert op.name in table
  assert "compression" in table and f"{s.deployed_bytes:,}" in table


def test_file_is_the_deployed_size_plus_a_header(test_config):
  program = lowering.lower(_model(test_config, "vgg_small"), (32, 32, 3))
  s = summary.summarize(program)
  data = to_bytes(program)
  header = PREAMBLE.size + np.frombuffer(data[12:16], "<u4")[0]
  alignment = len(data) - header - s.deployed_bytes
  assert 0 <= alignment < ALIGN * len(program.ops) * 4
  assert len(data) - s.deployed_bytes < 0.02 * s.deployed_bytes


def test_summary_command_prints_the_table_for_a_config():
  done = subprocess.run(
    [sys.executable, "-m", "bnn_jax.deploy.summary", "--config=configs/test.py"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.startswith("vgg_small (binary), input 8x8x3, 4 classes")
  assert "act2 (+bn2)" in done.stdout and "file size" in done.stdout
