"""Models: VGG-Small's layout and size, float and binary from one definition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import layers, models


def _vgg(test_config, binary, width=1.0, image_shape=(32, 32, 3), abstract=False):
  """VGG-Small; abstract: shapes only (nnx.eval_shape, nothing initialized or compiled)."""
  test_config.model.binary = binary
  test_config.model.width = width
  create = lambda: models.create_model(test_config, 10, image_shape, nnx.Rngs(0))
  return nnx.eval_shape(create) if abstract else create()


def _weights_without_bn_and_scales(model):
  """Conv and dense weights (dense bias included), BatchNorm and scales aside (docs/method.md)."""
  total = 0
  for path, var in nnx.iter_graph(model):
    if isinstance(var, nnx.Param) and not isinstance(var, layers.Scale):
      if not str(path[0]).startswith("bn"):
        total += int(np.prod(var.get_value().shape))
  return total


@pytest.mark.parametrize("binary", [True, False])
def test_vgg_small_has_the_papers_weight_count(test_config, binary):
  model = _vgg(test_config, binary, abstract=True)
  assert _weights_without_bn_and_scales(model) == 4_656_522


def test_float_and_binary_vgg_share_every_shape_but_the_scales(test_config):
  shapes = lambda m, kind: jax.tree.map(jnp.shape, nnx.state(m, kind))
  binary, full = _vgg(test_config, True, abstract=True), _vgg(test_config, False, abstract=True)
  assert nnx.to_pure_dict(shapes(binary, nnx.Not(layers.Scale))) == nnx.to_pure_dict(
    shapes(full, nnx.Everything())
  )
  assert len(jax.tree.leaves(nnx.state(binary, layers.WeightScale))) == 5
  assert len(jax.tree.leaves(nnx.state(binary, layers.ActivationScale))) == 5
  assert len(jax.tree.leaves(nnx.state(full, layers.Scale))) == 0


def test_vgg_small_binary_layers_are_conv1_to_conv5(test_config):
  model = _vgg(test_config, True, width=1 / 16)
  binary = sorted(str(p[0]) for p, v in nnx.iter_graph(model) if isinstance(v, layers.LatentWeight))
  assert binary == ["conv1", "conv2", "conv3", "conv4", "conv5"]
  assert isinstance(model.conv0, nnx.Conv) and isinstance(model.head, nnx.Linear)


@pytest.mark.parametrize("image_shape", [(32, 32, 3), (28, 28, 1), (8, 8, 3)])
def test_vgg_small_output_shape(test_config, image_shape):
  model = _vgg(test_config, True, width=1 / 16, image_shape=image_shape)
  # Traced, not run: every layer's shape is checked without compiling each op for these shapes.
  forward = lambda m, x: m(x, train=True)
  assert nnx.eval_shape(forward, model, jnp.zeros((2, *image_shape))).shape == (2, 10)


def test_too_small_images_and_unknown_model_are_refused(test_config):
  with pytest.raises(ValueError, match="too small for VGG-Small"):
    _vgg(test_config, True, width=1 / 16, image_shape=(4, 4, 3))
  test_config.model.name = "vgg_huge"
  with pytest.raises(ValueError, match="unknown model 'vgg_huge'; allowed:"):
    models.create_model(test_config, 10, (32, 32, 3), nnx.Rngs(0))


def test_vgg_small_forward_pass_is_the_lq_nets_layout(test_config):
  """The layer order, spelled out here independently of the model's `stages` (which training
  and the export both walk, so an order mistake there would pass every exactness test)."""
  model = _vgg(test_config, True, width=1 / 16)
  order = " ".join(
    f"{s.name}[{s.window[0]}x{s.window[1]}/{s.strides[0]}]" if hasattr(s, "window") else s.name
    for s in model.stages
  )
  assert order == (
    "conv0 bn1 act1 conv1 pool1[2x2/2] bn2 act2 conv2 bn3 act3 conv3 pool3[2x2/2] "
    "bn4 act4 conv4 bn5 act5 conv5 pool5[2x2/2] bn6 act6 flatten head"
  )
  assert all(not s.inputs for s in model.stages)  # a chain: each stage reads the one before
