"""bnn_jax.conv: the forward pass equals lax.conv_general_dilated's bit for bit and the
matrix-product gradients equal lax's to float rounding on every layer shape the models use; the
backend switch; nnx.Conv and the models wired to it."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from bnn_jax import conv, models, winograd
from bnn_jax.errors import InputError

DN = ("NHWC", "HWIO", "NHWC")

# (input [N, H, W, Cin], kernel [kh, kw, Cin / groups, Cout], strides, padding, groups): every
# conv shape of models.py with tiny channel counts, spatial sizes where the stride leaves a rest.
LAYERS = {
  "vgg_3x3": ((2, 8, 8, 4), (3, 3, 4, 6), 1, "SAME", 1),
  "vgg_conv0_rgb": ((2, 8, 8, 3), (3, 3, 3, 5), 1, "SAME", 1),
  # 16 input channels: the kernel gradient by Winograd (sizes not a multiple of its 4x4 tiles)
  "vgg_3x3_winograd": ((2, 8, 11, 16), (3, 3, 16, 4), 1, "SAME", 1),
  "resnet_3x3_s1_winograd": ((3, 9, 8, 16), (3, 3, 16, 4), 1, ((1, 1), (1, 1)), 1),
  "alexnet_conv1_11x11_s4": ((2, 27, 27, 3), (11, 11, 3, 5), 4, ((2, 2), (2, 2)), 1),
  "alexnet_5x5": ((2, 7, 7, 4), (5, 5, 4, 6), 1, "SAME", 1),
  "alexnet_3x3": ((2, 5, 5, 6), (3, 3, 6, 4), 1, "SAME", 1),
  "resnet_stem_7x7_s2": ((2, 15, 15, 3), (7, 7, 3, 4), 2, ((3, 3), (3, 3)), 1),
  "resnet_3x3_s1": ((2, 6, 6, 4), (3, 3, 4, 4), 1, ((1, 1), (1, 1)), 1),
  "resnet_3x3_s2": ((2, 7, 7, 4), (3, 3, 4, 6), 2, ((1, 1), (1, 1)), 1),
  "resnet_1x1_s2_downsample": ((2, 7, 7, 4), (1, 1, 4, 6), 2, "VALID", 1),
  "grouped_3x3": ((2, 6, 6, 4), (3, 3, 2, 6), 1, "SAME", 2),
  "grouped_3x3_s2": ((2, 7, 7, 4), (3, 3, 2, 6), 2, ((1, 1), (1, 1)), 2),
  "grouped_1x1_s2": ((2, 7, 7, 4), (1, 1, 2, 6), 2, "VALID", 2),
  "padded_1x1_s2": ((2, 6, 6, 4), (1, 1, 4, 3), 2, ((1, 0), (0, 1)), 1),
  "valid_3x3_s2": ((2, 8, 8, 4), (3, 3, 4, 2), 2, "VALID", 1),
}


def _reference(x, w, strides, padding, groups):
  return jax.lax.conv_general_dilated(
    x, w, (strides, strides), padding, dimension_numbers=DN, feature_group_count=groups
  )


def _inputs(x_shape, w_shape, dtype=jnp.float32, seed=0):
  kx, kw = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, x_shape, dtype), jax.random.normal(kw, w_shape, dtype)


def _bits(a):
  """The raw bits, so that equal means bit for bit (-0.0 against 0.0 and NaNs included)."""
  a = np.asarray(a)
  return a.view({2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize])


def _value_and_grads(fn, x, w, cotangent):
  y, vjp = jax.vjp(fn, x, w)
  return (y, *vjp(cotangent))


def _check_layer(name, dtype=jnp.float32, rtol=1e-5, atol=1e-4):
  x_shape, w_shape, strides, padding, groups = LAYERS[name]
  x, w = _inputs(x_shape, w_shape, dtype)
  ref = lambda x, w: _reference(x, w, strides, padding, groups)
  ours = lambda x, w: conv.conv2d(x, w, strides, padding, groups, matmul_gradients=True)
  y = ref(x, w)
  cotangent = jax.random.normal(jax.random.key(1), y.shape, dtype)
  expected = _value_and_grads(ref, x, w, cotangent)
  actual = jax.jit(lambda x, w, c: _value_and_grads(ours, x, w, c))(x, w, cotangent)
  for what, a, e in zip(("output", "input gradient", "kernel gradient"), actual, expected):
    assert a.shape == e.shape and a.dtype == e.dtype, what
    if what == "output":  # XLA's convolution itself: bit for bit
      np.testing.assert_array_equal(_bits(a), _bits(e), err_msg=f"{name}: {what}")
    np.testing.assert_allclose(
      np.float32(a), np.float32(e), rtol=rtol, atol=atol, err_msg=f"{name}: {what}"
    )


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_matmul_gradients_equal_lax_on_every_model_layer_shape(name):
  _check_layer(name)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_forward_is_lax_bit_for_bit_and_xla_gradients_are_lax_own(name):
  # The forward pass, jitted or not, with either backward pass; matmul_gradients=False (what
  # GPU and TPU get) gives lax's own gradients, bit for bit too.
  x_shape, w_shape, strides, padding, groups = LAYERS[name]
  x, w = _inputs(x_shape, w_shape)
  ref = lambda x, w: _reference(x, w, strides, padding, groups)
  cotangent = jax.random.normal(jax.random.key(1), ref(x, w).shape)
  for matmul in (True, False):
    ours = lambda x, w, m=matmul: conv.conv2d(x, w, strides, padding, groups, matmul_gradients=m)
    np.testing.assert_array_equal(_bits(ours(x, w)), _bits(ref(x, w)))
    np.testing.assert_array_equal(_bits(jax.jit(ours)(x, w)), _bits(jax.jit(ref)(x, w)))
  xla = lambda x, w: conv.conv2d(x, w, strides, padding, groups, matmul_gradients=False)
  for a, e in zip(_value_and_grads(xla, x, w, cotangent), _value_and_grads(ref, x, w, cotangent)):
    np.testing.assert_array_equal(_bits(a), _bits(e))


@pytest.mark.parametrize(
  "name", ["vgg_3x3_winograd", "resnet_3x3_s1_winograd", "resnet_3x3_s2", "grouped_1x1_s2"]
)
def test_kernel_gradient_summed_over_image_chunks(name, monkeypatch):
  # A budget below one image's im2col: one image per chunk (2 or 3), summed by a loop.
  monkeypatch.setattr(conv, "CHUNK_BYTES", 1)
  _check_layer(name)


@pytest.mark.slow  # about 5 s of CPU each (bfloat16 compiles slowly on XLA:CPU)
@pytest.mark.parametrize("name", ["vgg_3x3", "resnet_3x3_s2", "grouped_3x3"])
def test_bfloat16_inputs_give_bfloat16_gradients_close_to_lax(name):
  _check_layer(name, dtype=jnp.bfloat16, rtol=5e-2, atol=0.25)


def test_winograd_only_for_wide_3x3_stride_1_float32_kernels_on_8x8_and_more():
  wide, f32, hw = (3, 3, 16, 4), jnp.float32, (8, 8)
  assert winograd.applies(wide, (1, 1), 1, f32, hw)
  for name in ("vgg_3x3_winograd", "resnet_3x3_s1_winograd"):  # so those tests check Winograd
    (_, h, w, _), kernel_shape, _, padding, _ = LAYERS[name]
    out_hw = (h + sum(padding[0]) - 2, w + sum(padding[1]) - 2) if padding != "SAME" else (h, w)
    assert winograd.applies(kernel_shape, (1, 1), 1, f32, out_hw)
  assert not winograd.applies((3, 3, 3, 4), (1, 1), 1, f32, hw)  # RGB stem: im2col
  assert not winograd.applies(wide, (2, 2), 1, f32, hw)
  assert not winograd.applies((3, 3, 8, 4), (1, 1), 2, f32, hw)
  assert not winograd.applies(wide, (1, 1), 1, jnp.bfloat16, hw)
  assert not winograd.applies((5, 5, 16, 4), (1, 1), 1, f32, hw)
  assert not winograd.applies(wide, (1, 1), 1, f32, (7, 7))  # too few tiles
  assert not winograd.applies(wide, (1, 1), 1, f32, (13, 13))  # 16x16 tiles: 51 % more


def test_winograd_and_im2col_kernel_gradients_agree():
  x, _ = _inputs((2, 10, 9, 16), (3, 3, 16, 4))
  g = jax.random.normal(jax.random.key(4), (2, 10, 9, 4))
  pads = ((1, 1), (1, 1))
  winograd = conv._kernel_grad_winograd(x, g, pads)
  im2col = conv._kernel_grad_im2col(x, g, (3, 3, 16, 4), (1, 1), pads, 1)
  np.testing.assert_allclose(winograd, im2col, rtol=1e-5, atol=1e-4)


def test_winograd_kernel_from_tiles_is_g_transpose_du_g():
  du = jax.random.normal(jax.random.key(5), (6, 6, 3, 2))
  expected = np.einsum("pi,pqco,qj->ijco", winograd.G, np.asarray(du, np.float64), winograd.G)
  np.testing.assert_allclose(winograd.kernel_from_tiles(du), expected, rtol=1e-5, atol=1e-6)


def test_chunk_is_the_largest_divisor_of_the_batch_within_the_budget(monkeypatch):
  monkeypatch.setattr(conv, "CHUNK_BYTES", 1000)
  assert conv._chunk_images(64, 100) == 8  # 10 would fit, 8 divides 64
  assert conv._chunk_images(7, 100) == 7
  assert conv._chunk_images(6, 5000) == 1


def test_custom_gradient_on_cpu_for_large_layers_and_lax_itself_elsewhere(monkeypatch):
  # Traced only: VGG-Small's 128->128 layer at batch 64 (9.7 G multiply-adds) and at batch 16.
  shape = lambda batch: jax.ShapeDtypeStruct((batch, 32, 32, 128), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 128, 128), jnp.float32)
  # A new function per trace: make_jaxpr caches traces by function.
  text = lambda x, w: str(jax.make_jaxpr(lambda x, w: conv.conv2d(x, w))(x, w))
  macs = conv._macs((64, 32, 32, 128), (3, 3, 128, 128), (1, 1), ((1, 1),) * 2)
  assert macs == 64 * 32 * 32 * 9 * 128 * 128
  assert macs / 4 < conv.MATMUL_MIN_MACS <= macs
  if jax.default_backend() == "cpu":
    assert "custom_vjp_call" in text(shape(64), w) and "custom_vjp_call" not in text(shape(16), w)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert not conv.use_matmul_gradients() and not conv.use_matmul_gradients(10**12)
  assert "custom_vjp_call" not in text(shape(64), w)
  x, w = _inputs((1, 5, 5, 2), (3, 3, 2, 3))
  text = lambda: str(jax.make_jaxpr(lambda x, w: conv.conv2d(x, w))(x, w))
  assert "custom_vjp_call" not in text()
  assert "custom_vjp_call" not in str(
    jax.make_jaxpr(lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "SAME", None, None, DN))(
      x, w
    )
  )


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(strides=0),
    dict(strides=(1, 2, 3)),
    dict(padding="FULL"),
    dict(padding=((1, -1), (1, 1))),
    dict(feature_group_count=3),
  ],
)
def test_bad_arguments_raise_input_error_naming_them(kwargs):
  x, w = _inputs((1, 5, 5, 4), (3, 3, 4, 4))
  with pytest.raises(InputError, match="conv2d"):
    conv.conv2d(x, w, **kwargs)


def test_nnx_conv_with_our_conv_general_dilated_matches_lax_forward_and_gradients(monkeypatch):
  monkeypatch.setattr(conv, "use_matmul_gradients", lambda *size: True)
  kwargs = dict(strides=2, padding=((1, 1), (1, 1)), feature_group_count=2, use_bias=True)
  ours = nnx.Conv(4, 6, (3, 3), conv_general_dilated=conv.conv_general_dilated, **kwargs,
                  rngs=nnx.Rngs(0))  # fmt: skip
  plain = nnx.Conv(4, 6, (3, 3), **kwargs, rngs=nnx.Rngs(0))
  assert jax.tree.map(jnp.shape, nnx.state(ours)) == jax.tree.map(jnp.shape, nnx.state(plain))
  x = jax.random.normal(jax.random.key(2), (2, 7, 7, 4))
  loss = lambda m, x: jnp.sum(jnp.sin(m(x)))
  np.testing.assert_allclose(ours(x), plain(x), rtol=1e-5, atol=1e-5)
  for a, b in zip(
    jax.tree.leaves(nnx.grad(loss, argnums=(0, 1))(ours, x)),
    jax.tree.leaves(nnx.grad(loss, argnums=(0, 1))(plain, x)),
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_general_dilated_passes_what_it_does_not_cover_to_lax(monkeypatch):
  monkeypatch.setattr(conv, "use_matmul_gradients", lambda *size: True)
  x, w = _inputs((1, 7, 7, 2), (3, 3, 2, 3))
  dilated = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "SAME", None, (2, 2), DN)
  assert "custom_vjp_call" not in str(jax.make_jaxpr(dilated)(x, w))
  expected = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", None, (2, 2), DN)
  np.testing.assert_allclose(dilated(x, w), expected, rtol=1e-6)


@pytest.mark.slow  # compiles a whole VGG-Small gradient twice
@pytest.mark.parametrize("binary", [True, False])
def test_vgg_small_gradients_equal_with_and_without_matmul_gradients(binary, monkeypatch):
  cfg = ml_collections.ConfigDict(
    dict(
      weight_estimator="higher_order", weight_scale="trainable", weight_scale_per="channel",
      weight_scale_init="mean_abs", activation_mode="step", activation_estimator="long_tailed",
      activation_scale="trainable", beta_init=1.0,
    )
  )  # fmt: skip
  kit = models.binary_kit(cfg) if binary else models.float_kit()
  model = models.VGGSmall(kit, image_shape=(8, 8, 3), width=1 / 32, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(3), (4, 8, 8, 3))
  labels = jnp.arange(4) % 10

  def grads(matmul):
    monkeypatch.setattr(conv, "use_matmul_gradients", lambda *size: matmul)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
      fresh = jax.tree.map(lambda v: v, rest)  # BatchNorm updates its statistics in the trace
      logits = nnx.merge(graphdef, params, fresh)(x, train=True)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    # All six convs (the float first conv too) take the custom gradient, or none does.
    assert str(jax.make_jaxpr(loss)(params)).count("bwd=_conv_bwd") == (6 if matmul else 0)
    return jax.jit(jax.grad(loss))(params)

  ours, reference = grads(True), grads(False)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
  "name", ["vgg_3x3_winograd", "resnet_1x1_s2_downsample", "grouped_3x3_s2", "valid_3x3_s2"]
)
def test_float64_gradients_keep_float64_precision(name):
  # The products accumulate in the inputs' type where it is wider than float32 (float32 sums
  # left 1.6e-8 to 9.5e-8 relative error here); enable_x64 is undone when the block exits.
  x_shape, w_shape, strides, padding, groups = LAYERS[name]
  with jax.enable_x64(True):
    x, w = _inputs(x_shape, w_shape, jnp.float64)
    ref = lambda x, w: _reference(x, w, strides, padding, groups)
    ours = lambda x, w: conv.conv2d(x, w, strides, padding, groups, matmul_gradients=True)
    cotangent = jax.random.normal(jax.random.key(1), ref(x, w).shape, jnp.float64)
    expected = _value_and_grads(ref, x, w, cotangent)
    actual = _value_and_grads(ours, x, w, cotangent)
    pads = conv._explicit_padding(padding, x_shape[1:3], w_shape[:2], (strides, strides))
    if winograd.applies(w_shape, (strides, strides), groups, jnp.float32, actual[0].shape[1:3]):
      actual += (conv._kernel_grad_winograd(x, cotangent, pads),)  # float32 only in conv2d
      expected += (expected[2],)
    for a, e in zip(actual, expected):
      assert a.dtype == jnp.float64
      assert np.abs(np.asarray(a) - e).max() <= 1e-13 * np.abs(np.asarray(e)).max(), name
  assert jnp.zeros(()).dtype == jnp.float32  # x64 did not leak


# Measured by benchmarks/winograd_error.py (batch 16) on every layer that takes Winograd: at most
# WINOGRAD_ERROR of the largest entry (the docstring of bnn_jax.conv has the figures).
WINOGRAD_ERROR = 3e-5


@pytest.mark.parametrize("binary_input", [False, True])
def test_winograd_float32_kernel_gradient_error_within_the_stated_bound(binary_input):
  # A scaled-down VGG-Small layer (16x16, 32 -> 64 channels); the reference in float64.
  with jax.enable_x64(True):
    x, _ = _inputs((4, 16, 16, 32), (3, 3, 32, 64), jnp.float64)
    x = jnp.sign(x) if binary_input else x
    g = jax.random.normal(jax.random.key(6), (4, 16, 16, 64), jnp.float64)
    pads = ((1, 1), (1, 1))
    reference = np.asarray(conv._kernel_grad_im2col(x, g, (3, 3, 32, 64), (1, 1), pads, 1))
  dw = conv._kernel_grad_winograd(jnp.float32(x), jnp.float32(g), pads)
  assert dw.dtype == jnp.float32
  error = np.abs(np.float64(dw) - reference).max() / np.abs(reference).max()
  assert 1e-8 < error <= WINOGRAD_ERROR  # float32 rounding, within the bound
