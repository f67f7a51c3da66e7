"""Models: AlexNet and ResNet-18 (sizes, binary layers, block order), against docs/method.md."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import config_checks, layers, models
from bnn_jax.errors import InputError


def _config(name, binary=True, **model):
  from configs import base

  c = base.get_config()
  c.model.name = name
  c.model.binary = binary
  for k, v in model.items():
    c.model[k] = v
  return c


def _abstract(name, binary=True, num_classes=1000, image_shape=(224, 224, 3), **model):
  """The full-size model without allocating its weights."""
  config = _config(name, binary, **model)
  return nnx.eval_shape(lambda: models.create_model(config, num_classes, image_shape, nnx.Rngs(0)))


def _tiny_abstract(name, binary=True, image_shape=(64, 64, 3), **model):
  return _abstract(name, binary, 10, image_shape, width=1 / 16, **model)


def _sizes(model):
  """(float32 weights, binary weights): conv and dense weights and biases; BN and scales aside."""
  full, binary = 0, 0
  for path, var in nnx.iter_graph(model):
    if not isinstance(var, nnx.Param) or isinstance(var, layers.Scale):
      continue
    if any("bn" in str(p) for p in path):  # BatchNorm scale and bias
      continue
    if isinstance(var, layers.LatentWeight):
      binary += var.get_value().size
    else:
      full += var.get_value().size
  return full, binary


MIB = 2**20


def _binary_layer_names(model):
  """Dotted paths of the model's binary conv and dense layers."""
  return [
    ".".join(str(p) for p in path)
    for path, node in nnx.iter_graph(model)
    if isinstance(node, layers.BinaryConv | layers.BinaryDense)
  ]


def test_resnet18_has_the_standard_parameter_count():
  model = _abstract("resnet18", binary=False)
  total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  batchnorm = sum(
    x.size
    for _, node in nnx.iter_graph(model)
    if isinstance(node, nnx.BatchNorm)
    for x in jax.tree.leaves(nnx.state(node, nnx.Param))
  )
  full, binary = _sizes(model)
  # torchvision's count without its 9,600 BatchNorm parameters: the same convs and final dense.
  assert (full, binary) == (11_689_512 - 9_600, 0)
  # Pre-activation blocks place BatchNorm differently: 128 parameters more than torchvision's.
  assert batchnorm == 9_600 + 128
  assert total == full + batchnorm == 11_689_640  # nothing else holds parameters


def test_alexnet_has_the_standard_parameter_count():
  full, binary = _sizes(_abstract("alexnet", binary=False))
  expected = (
    11 * 11 * 3 * 96 + 5 * 5 * 96 * 256 + 3 * 3 * 256 * 384 + 3 * 3 * 384 * 384
    + 3 * 3 * 384 * 256 + 256 * 6 * 6 * 4096 + 4096 * 4096 + 4096 * 1000 + 1000
  )  # fmt: skip
  assert (full, binary) == (expected, 0) == (62_368_776, 0)


@pytest.mark.parametrize(
  "name, float32_mib, binary_mib",
  [("vgg_small", 17.8, 0.87), ("resnet18", 44.6, 3.96), ("alexnet", 238, 22.7)],
)
def test_model_sizes_match_paper(name, float32_mib, binary_mib):
  """docs/method.md, "Networks": 1-bit binary layers, float32 first and last layers."""
  num_classes, shape = (10, (32, 32, 3)) if name == "vgg_small" else (1000, (224, 224, 3))
  full, _ = _sizes(_abstract(name, False, num_classes, shape))
  float_part, binary_part = _sizes(_abstract(name, True, num_classes, shape))
  assert float_part + binary_part == full
  assert full * 4 / MIB == pytest.approx(float32_mib, abs=0.05 * float32_mib / 10)
  assert (float_part * 4 + binary_part / 8) / MIB == pytest.approx(binary_mib, rel=0.01)


# docs/method.md, "Networks": the binary layers of each model.
RESNET18_BLOCK_CONVS = [
  f"stage{s}_block{b}.conv{c}" for s in (1, 2, 3, 4) for b in (1, 2) for c in (1, 2)
]
RESNET18_DOWNSAMPLES = [f"stage{s}_block1.downsample_conv" for s in (2, 3, 4)]
BINARY_LAYERS = {
  ("vgg_small", ()): ["conv1", "conv2", "conv3", "conv4", "conv5"],
  ("alexnet", ()): ["conv2", "conv3", "conv4", "conv5", "fc6", "fc7"],
  ("resnet18", ()): RESNET18_BLOCK_CONVS,
  ("resnet18", (("downsample", "binary"),)): RESNET18_BLOCK_CONVS + RESNET18_DOWNSAMPLES,
  ("resnet18", (("shortcut", "bireal"),)): RESNET18_BLOCK_CONVS,
}


@pytest.mark.parametrize("name, options", list(BINARY_LAYERS))
def test_binary_layers_are_those_of_paper(name, options):
  shape = (32, 32, 3) if name == "vgg_small" else (224, 224, 3)
  model = _abstract(name, True, 10, shape, **dict(options))
  assert sorted(_binary_layer_names(model)) == sorted(BINARY_LAYERS[name, options])
  float_model = _abstract(name, False, 10, shape, **dict(options))
  assert _binary_layer_names(float_model) == []


def test_alexnet_first_and_last_layers_and_activations():
  model = _tiny_abstract("alexnet")
  assert isinstance(model.conv1, nnx.Conv) and isinstance(model.fc8, nnx.Linear)
  for i in range(1, 7):
    assert isinstance(getattr(model, f"act{i}"), layers.BinaryActivation)
  assert model.act7 is nnx.relu
  binary_final = _tiny_abstract("alexnet", final_activation="binary")
  assert isinstance(binary_final.act7, layers.BinaryActivation)


def _order(model) -> str:
  """A model's `stages` in a line: names, pools with window/stride(/padding), inputs."""
  parts = []
  for s in model.stages:
    part = s.name
    if hasattr(s, "window"):
      pad = "" if s.padding == "VALID" else f"/pad{s.padding[0][0]}"
      part += f"[{s.window[0]}x{s.window[1]}/{s.strides[0]}{pad}]"
    parts.append(part + (f"({','.join(s.inputs)})" if s.inputs else ""))
  return " ".join(parts)


def test_forward_passes_are_the_published_layouts():
  """The layer orders, spelled out here independently of the models' `stages` (which training
  and the export both walk, so an order mistake there would pass every exactness test)."""
  assert _order(_tiny_abstract("alexnet")) == (
    "conv1 pool1[3x3/2] bn1 act1 conv2 pool2[3x3/2] bn2 act2 conv3 bn3 act3 conv4 bn4 act4 "
    "conv5 pool5[3x3/2] bn5 act5 flatten fc6 bn6 act6 fc7 bn7 act7 fc8"
  )
  blocks = " ".join(f"stage{s}_block{b}" for s in (1, 2, 3, 4) for b in (1, 2))
  assert _order(_tiny_abstract("resnet18")) == (
    f"stem_conv stem_bn stem_relu stem_pool[3x3/2/pad1] {blocks} final_bn final_act pool head"
  )
  model = _tiny_abstract("resnet18", shortcut="bireal", downsample="binary")
  assert _order(model.stage1_block1) == (  # identity shortcut
    "bn1 act1 conv1(act1) add1(conv1,input) bn2 act2 conv2 add2(conv2,add1)"
  )
  assert _order(model.stage2_block1) == (
    "bn1 act1 downsample_conv(act1) downsample_bn conv1(act1) add1(conv1,downsample_bn) "
    "bn2 act2 conv2 add2(conv2,add1)"
  )
  block = _tiny_abstract("resnet18").stage2_block1  # shortcut="block", downsample="float"
  assert _order(block) == (
    "bn1 act1 downsample_conv(input) downsample_bn conv1(act1) bn2 act2 conv2 "
    "add(conv2,downsample_bn)"
  )


def test_resnet18_stem_head_and_downsamples_are_full_precision_by_default():
  model = _tiny_abstract("resnet18")
  assert isinstance(model.stem_conv, nnx.Conv) and isinstance(model.head, nnx.Linear)
  for s in (2, 3, 4):
    block = getattr(model, f"stage{s}_block1")
    assert isinstance(block.downsample_conv, nnx.Conv)
    assert block.downsample_conv.kernel_size == (1, 1)
  assert model.stage1_block1.downsample_conv is None  # identity shortcut


@pytest.mark.parametrize(
  "name, shape", [("alexnet", (224, 224, 3)), ("alexnet", (64, 64, 3)), ("resnet18", (32, 32, 3))]
)
@pytest.mark.parametrize("binary", [True, False])
def test_output_shapes(name, shape, binary):
  """Traced only (no compile): values are checked by the training tests."""
  model = _tiny_abstract(name, binary, image_shape=shape)
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  for train in (True, False):
    logits = nnx.eval_shape(lambda m, x, train=train: m(x, train=train), model, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32


def test_alexnet_refuses_too_small_images():
  with pytest.raises(ValueError, match="too small for AlexNet"):
    _tiny_abstract("alexnet", image_shape=(48, 48, 3))


def _blocks(shortcut, downsample, binary=True):
  """A downsampling block (8 -> 16 channels, stride 2) and an identity block (16 channels)."""
  config = _config("resnet18", binary)
  kit = models.binary_kit(config.binary) if binary else models.float_kit()
  make = lambda cin, cout, stride: models.ResNetBlock(
    kit, cin, cout, stride, shortcut=shortcut, downsample=downsample, rngs=nnx.Rngs(0)
  )
  return make(8, 16, 2), make(16, 16, 1)


@pytest.mark.parametrize("shortcut", ["block", "bireal"])
@pytest.mark.parametrize("downsample", ["float", "binary"])
def test_resnet_block_computes_its_documented_order(shortcut, downsample):
  """The exact order of ResNetBlock's docstring (the export engine relies on it)."""
  block, identity = _blocks(shortcut, downsample)
  bn = lambda m, v: m(v, use_running_average=True)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 8))
  a = block.act1(bn(block.bn1, x))
  skip = bn(block.downsample_bn, block.downsample_conv(a if downsample == "binary" else x))
  h = block.conv1(a)
  if shortcut == "bireal":
    h = h + skip
    expected = block.conv2(block.act2(bn(block.bn2, h))) + h
  else:
    expected = block.conv2(block.act2(bn(block.bn2, h))) + skip
  np.testing.assert_allclose(block(x, train=False), expected, rtol=1e-6, atol=1e-6)

  assert identity.downsample_conv is None
  y = jax.random.normal(jax.random.key(2), (2, 4, 4, 16))
  h = identity.conv1(identity.act1(bn(identity.bn1, y)))
  if shortcut == "bireal":
    h = h + y
    expected = identity.conv2(identity.act2(bn(identity.bn2, h))) + h
  else:
    expected = identity.conv2(identity.act2(bn(identity.bn2, h))) + y
  np.testing.assert_allclose(identity(y, train=False), expected, rtol=1e-6, atol=1e-6)


def test_resnet_switches_change_the_function():
  x = jax.random.normal(jax.random.key(3), (2, 8, 8, 8))
  reference = _blocks("block", "float")[0](x)
  assert not np.allclose(reference, _blocks("bireal", "float")[0](x))
  assert not np.allclose(reference, _blocks("block", "binary")[0](x))
  assert isinstance(_blocks("block", "binary")[0].downsample_conv, layers.BinaryConv)
  assert isinstance(_blocks("block", "binary", binary=False)[0].downsample_conv, nnx.Conv)


def test_float_and_binary_resnet_share_every_shape_but_the_scales():
  shapes = lambda m, kind: jax.tree.map(jnp.shape, nnx.state(m, kind))
  binary, full = _tiny_abstract("resnet18"), _tiny_abstract("resnet18", binary=False)
  assert nnx.to_pure_dict(shapes(binary, nnx.Not(layers.Scale))) == nnx.to_pure_dict(
    shapes(full, nnx.Everything())
  )
  assert len(jax.tree.leaves(nnx.state(binary, layers.WeightScale))) == 16


def test_model_options_are_checked_per_model():
  assert models.model_options("resnet18") == ["width", "final_activation", "shortcut", "downsample"]
  vgg = _config("vgg_small", shortcut="bireal")
  with pytest.raises(InputError, match="config.model.shortcut is not an option of model"):
    config_checks.check_config(vgg, 1)
  with pytest.raises(InputError, match="config.model.shortcut is not an option of model"):
    models.create_model(vgg, 10, (32, 32, 3), nnx.Rngs(0))
  bad = _config("resnet18", shortcut="sometimes")
  with pytest.raises(InputError, match="config.model.shortcut = 'sometimes' is not allowed"):
    config_checks.check_config(bad, 1)
