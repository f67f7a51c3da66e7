"""The packed engine against the training graph: bits, integer accumulations, logits, top-1."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import layers, models, run, stages
from bnn_jax.deploy import inference, lowering
from bnn_jax.errors import InputError
from tests.conftest import ROOT

# ----------------------------------------------------------------------------- helpers


def randomize(model, seed=0, negative=False, image_shape=None):
  """Trained-looking BatchNorm statistics and scales; with negative=True some alpha, beta and
  BatchNorm scales are negative (the folding must handle every sign exactly).

  The statistics are those of random images (20 train-mode passes, momentum 0.9), shifted by
  up to half a standard deviation, so that about half of the bits are set.
  """
  rng = np.random.default_rng(seed)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, layers.Scale):
      v = node[...]
      factor = rng.uniform(0.5, 1.5, v.shape)
      if negative:
        factor = factor * np.where(rng.random(v.shape) < 0.3, -1, 1)
      node[...] = (v * factor).astype(jnp.float32)
  if image_shape is not None:
    # the test images: uint8 noise, normalized with mean 0 and std 1 (the Program's default)
    x = jnp.asarray(rng.integers(0, 256, (32, *image_shape)) / 255.0, jnp.float32)
    step = nnx.jit(lambda m, x: m(x, train=True))
    for _ in range(20):
      step(model, x)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      n = node.mean[...].shape[0]
      std = np.sqrt(np.asarray(node.var[...]))
      node.mean[...] = node.mean[...] + jnp.asarray(rng.normal(0, 0.5, n) * std, jnp.float32)
      sign = np.where(rng.random(n) < 0.3, -1, 1) if negative else 1
      node.scale[...] = jnp.asarray(sign * rng.uniform(0.5, 1.5, n), jnp.float32)
      node.bias[...] = jnp.asarray(rng.normal(0, 0.2, n), jnp.float32)
  return model


def vgg(config, width=1 / 16, image_shape=(12, 12, 3), **binary):
  config.model.width = width
  for key, value in binary.items():
    if key == "final_activation":
      config.model.final_activation = value
    else:
      config.binary[key] = value
  return models.create_model(config, 5, image_shape, nnx.Rngs(0))


def _captured_outputs(model, x):
  return nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(x, train=False)


# One jitted function for every call: a model and batch shape seen before is not compiled again.
_jitted_captured_outputs = nnx.jit(_captured_outputs)


def training_graph(model, x):
  """Logits and every submodule's output (by dotted path) of model(x, train=False), jitted."""
  logits, captured = _jitted_captured_outputs(model, x)
  outputs = {}
  for path, var in nnx.to_flat_state(captured):
    names = [str(p) for p in path if str(p) not in ("__call__", "value")]
    if isinstance(var, nnx.Variable):
      outputs[".".join(names)] = var.get_value()[0]
  return np.asarray(logits), {k: np.asarray(v) for k, v in outputs.items()}


def module_at(model, dotted):
  node = model
  for part in dotted.split("."):
    node = getattr(node, part)
  return node


def activation_of(program, op):
  """The name of the binarization feeding binary op `op` (through a flatten)."""
  source = program.op(op.inputs[0])
  return program.op(source.inputs[0]).name if source.kind == "flatten" else source.name


def check_engine_matches(model, program, images, exact_bits=True, engine=None):
  """Asserts the engine reproduces model(x, train=False): bits, counts, logits, top-1.

  Returns the number of bits compared. exact_bits=False allows a bit to differ only where the
  training graph's pre-activation lies within float32 rounding of 0 (a float residual stream).
  engine: an inference.Engine of `program` to reuse (its compiled functions), or None for a new one.
  """
  engine = inference.Engine(program) if engine is None else engine
  x = engine.normalize(images)
  logits, outputs = training_graph(model, x)
  values = engine.run({"input": x}, collect=True)
  compared = 0
  for op in program.ops:
    if op.kind not in ("binary_conv", "binary_dense"):
      continue
    act_name = activation_of(program, op)
    act, layer = module_at(model, act_name), module_at(model, op.name)
    beta = 1.0 if act.beta is None else float(act.beta[...])
    a = outputs[act_name] / beta  # levels: {0, 1} or {-1, +1}
    train_bits = (a > 0).astype(np.uint8)
    engine_bits = engine.bits(act_name, values[act_name])
    compared += train_bits.size
    assert 0.02 < train_bits.mean() < 0.98, f"{act_name}: too few bits vary to test anything"
    if exact_bits:
      np.testing.assert_array_equal(engine_bits, train_bits, err_msg=act_name)
    else:
      assert np.mean(engine_bits != train_bits) < 1e-4, act_name
    # The training graph's integer accumulation: its bits against sign(W), exact in float32.
    sign_w = np.where(np.asarray(layer.kernel[...]) >= 0, 1.0, -1.0).astype(np.float32)
    levels = engine_bits.astype(np.float32)
    if act.mode == "sign":
      levels = 2 * levels - 1
    if op.kind == "binary_conv":
      ref = jax.lax.conv_general_dilated(
        levels,
        sign_w,
        window_strides=tuple(op.attrs["strides"]),
        padding=[tuple(p) for p in op.attrs["padding"]],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
      )
    else:
      ref = levels.reshape(len(levels), -1) @ sign_w
    ref = np.asarray(ref).astype(np.int64)
    s = np.broadcast_to(np.asarray(layer.effective_alpha()), (op.shape[-1],)) * beta
    counts = np.asarray(values[op.name]) * np.where(s < 0, -1, 1)
    np.testing.assert_array_equal(counts, ref, err_msg=op.name)
    # ... and the training graph's float output is alpha * beta * count
    bias = 0 if getattr(layer, "bias", None) is None else np.asarray(layer.bias[...])
    np.testing.assert_allclose(
      outputs[op.name],
      s * ref + bias,
      rtol=1e-5,
      atol=1e-5 * np.abs(s).max() * (1 + np.abs(ref).max()),
    )
  out = np.asarray(values[program.output])
  np.testing.assert_allclose(out, logits, rtol=1e-4, atol=1e-4 * (1 + np.abs(logits).max()))
  np.testing.assert_array_equal(out.argmax(-1), logits.argmax(-1))
  return compared


def images(shape, n=6, seed=1):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


# ----------------------------------------------------------------------------- bits and kernels


def test_pack_and_unpack_bits_round_trip_with_partial_words():
  bits = np.random.default_rng(0).random((3, 5, 45)) < 0.5
  packed = inference.pack_bits(jnp.asarray(bits))
  assert packed.shape == (3, 5, 2) and packed.dtype == jnp.uint32
  np.testing.assert_array_equal(inference.unpack_bits(packed, 45), bits)
  assert int(packed[0, 0, 0]) == sum(int(b) << i for i, b in enumerate(bits[0, 0, :32]))


@pytest.mark.parametrize("strides,padding", [((1, 1), "SAME"), ((2, 2), "VALID"), ((2, 1), "SAME")])
def test_popcount_conv_equals_an_integer_convolution(strides, padding):
  rng = np.random.default_rng(0)
  bits = rng.random((2, 7, 6, 40)) < 0.4
  w = rng.random((3, 3, 40, 5)) < 0.5
  pads = jax.lax.padtype_to_pads((7, 6), (3, 3), strides, padding)
  x = inference.pack_bits(jnp.asarray(bits))
  w_words = np.asarray(inference.pack_bits(jnp.asarray(np.moveaxis(w, 3, 0))))  # [O,3,3,2]
  w_words = w_words.reshape(5, -1).T
  matches, ones = inference.popcount_conv(x, w_words, (3, 3), strides, pads)
  conv = lambda a, b: np.asarray(
    jax.lax.conv_general_dilated(
      a.astype(np.float32),
      b.astype(np.float32),
      strides,
      pads,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
  )
  np.testing.assert_array_equal(matches, conv(bits, w))
  np.testing.assert_array_equal(ones[..., 0], conv(bits, np.ones((3, 3, 40, 1)))[..., 0])


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(
  "settings",
  [
    {},
    {"negative": True},
    # The variants below: about 10 s of CPU each (model creation, 20 passes, the engine).
    pytest.param({"activation_mode": "sign", "negative": True}, marks=pytest.mark.slow),
    pytest.param({"final_activation": "binary"}, marks=pytest.mark.slow),
    pytest.param(
      {"weight_scale": "mean_abs", "activation_scale": "none", "weight_scale_per": "layer"},
      marks=pytest.mark.slow,
    ),
  ],
  ids=["default", "negative_scales", "sign_mode", "binary_final", "fixed_scales"],
)
def test_vgg_small_engine_is_bit_exact_with_the_training_graph(test_config, settings):
  settings = dict(settings)
  negative = settings.pop("negative", False)
  model = randomize(vgg(test_config, **settings), negative=negative, image_shape=(12, 12, 3))
  program = lowering.lower(model, (12, 12, 3))
  assert check_engine_matches(model, program, images((12, 12, 3))) > 0


def small(config, name, image_shape, **options):
  config.model.name = name
  config.model.width = 1 / 16
  for key, value in options.items():
    if key in models.model_options(name):
      config.model[key] = value
    else:
      config.binary[key] = value
  return models.create_model(config, 5, image_shape, nnx.Rngs(0))


@pytest.mark.parametrize(
  "settings",
  [
    {},
    pytest.param({"activation_mode": "sign", "final_activation": "binary"}, marks=pytest.mark.slow),
  ],
  ids=["default", "sign_mode_binary_final"],
)
def test_alexnet_engine_is_bit_exact_with_the_training_graph(test_config, settings):
  model = randomize(small(test_config, "alexnet", (67, 67, 3), **settings), 1, True, (67, 67, 3))
  program = lowering.lower(model, (67, 67, 3))
  assert [op.name for op in program.ops if op.kind == "binary_dense"] == ["fc6", "fc7"]
  check_engine_matches(model, program, images((67, 67, 3), n=4))


@pytest.mark.parametrize(
  "settings",
  [
    {},
    pytest.param({"shortcut": "bireal", "downsample": "binary"}, marks=pytest.mark.slow),
    pytest.param(
      {"activation_mode": "sign", "downsample": "binary", "final_activation": "binary"},
      marks=pytest.mark.slow,
    ),
  ],
  ids=["default", "bireal_binary_downsample", "sign_mode"],
)
def test_resnet18_engine_matches_the_training_graph(test_config, settings):
  model = randomize(small(test_config, "resnet18", (32, 32, 3), **settings), 2, True, (32, 32, 3))
  program = lowering.lower(model, (32, 32, 3))
  binary = [op.name for op in program.ops if op.kind == "binary_conv"]
  assert len(binary) == 16 + 3 * (settings.get("downsample") == "binary")
  check_engine_matches(model, program, images((32, 32, 3), n=4))


@pytest.mark.parametrize(
  "name,image_shape",
  [("vgg_small", (12, 12, 3)), ("alexnet", (67, 67, 3)), ("resnet18", (32, 32, 3))],
)
def test_float_models_run_in_the_engine_too(test_config, name, image_shape):
  test_config.model.binary = False
  model = randomize(small(test_config, name, image_shape), image_shape=image_shape)
  program = lowering.lower(model, image_shape)
  assert {op.kind for op in program.ops}.isdisjoint({"binary_conv", "binary_dense", "threshold"})
  engine = inference.Engine(program)
  x = engine.normalize(images(image_shape, n=4))
  logits = training_graph(model, x)[0]
  np.testing.assert_allclose(engine.run({"input": x}), logits, atol=1e-4 * (1 + abs(logits).max()))


def test_engine_reads_its_own_file_and_gives_the_same_logits(test_config, tmp_path):
  model = vgg(test_config, width=1 / 4, image_shape=(16, 16, 1))
  model = randomize(model, negative=True, image_shape=(16, 16, 1))
  program = lowering.lower(model, (16, 16, 1), mean=(0.3,), std=(0.2,))
  path = tmp_path / "m.bnn"
  inference.save(program, path)
  x = images((16, 16, 1))
  np.testing.assert_array_equal(
    inference.Engine(inference.load(path)).logits(x), inference.Engine(program).logits(x)
  )


def test_thresholds_are_exact_at_integer_ties():
  scale = np.array([2.0, -2.0, 0.0, 0.0, 1e-300, -3.0])
  shift = np.array([-6.0, 6.0, 1.0, -1.0, 1.0, -1e9])
  t, flip, _ = lowering._thresholds(scale, shift, fan_in=10)
  c = np.arange(-10, 11)[:, None]  # every count a layer of fan-in 10 can produce
  expected = scale * c + shift > 0
  np.testing.assert_array_equal((c > t) ^ flip, expected)


class _ConvBnPoolNet(nnx.Module):
  """conv -> BN -> max-pool -> act: the pooling sees the folded BatchNorm's (any) sign."""

  def __init__(self, kit, rngs):
    self.conv0 = models.float_kit().conv(3, 8, (3, 3), 1, rngs)
    self.bn0 = models.batch_norm(8, rngs)
    self.act0 = kit.activation()
    self.conv1 = kit.conv(8, 8, (3, 3), 1, rngs)
    self.bn1 = models.batch_norm(8, rngs)
    self.act1 = kit.activation()
    self.fc = kit.dense(4 * 4 * 8, 6, True, rngs)
    self.bn2 = models.batch_norm(6, rngs)
    self.act2 = kit.activation()
    self.head = models.float_kit().dense(6, 3, True, rngs)

  @property
  def stages(self):
    return [
      *map(stages.Layer, ["conv0", "bn0", "act0", "conv1", "bn1"]),
      models.pool_2x2("pool1"),
      stages.Layer("act1"),
      stages.Flatten("flatten"),
      *map(stages.Layer, ["fc", "bn2", "act2", "head"]),
    ]

  def __call__(self, x, train=False):
    return stages.forward(self, x, train)


@pytest.mark.parametrize("mode", ["step", "sign"])
def test_pooling_after_a_negative_batch_norm_and_binary_dense_with_bias(test_config, mode):
  test_config.binary.activation_mode = mode
  model = _ConvBnPoolNet(models.binary_kit(test_config.binary), nnx.Rngs(0))
  model = randomize(model, 3, negative=True, image_shape=(8, 8, 3))
  model.fc.bias[...] = jnp.asarray(np.random.default_rng(0).normal(0, 3, 6), jnp.float32)
  program = lowering.lower(model, (8, 8, 3))
  pool = program.op("pool1")
  assert "direction" in pool.arrays and (pool.arrays["direction"] == -1).any()
  assert program.op("fc").kind == "binary_dense"
  check_engine_matches(model, program, images((8, 8, 3), n=16))


# ----------------------------------------------------------------------------- errors


def test_engine_imports_no_training_code():
  code = (
    "import sys, bnn_jax.deploy.inference, bnn_jax.deploy.infer; "
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'optax', 'orbax') "
    "or m in ('bnn_jax.train', 'bnn_jax.optim', 'bnn_jax.layers', 'bnn_jax.models')))"
  )
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "[]"


DEPLOY_MODULES = sorted(p.stem for p in (ROOT / "bnn_jax" / "deploy").glob("*.py"))


@pytest.mark.parametrize("name", DEPLOY_MODULES)
def test_no_deployment_module_imports_the_training_loop(name):
  """Deployment reads a run through bnn_jax.run, never through the training loop."""
  assert {"export", "inference", "lowering"} <= set(DEPLOY_MODULES)
  code = f"import sys, bnn_jax.deploy.{name}; print('bnn_jax.train' in sys.modules)"
  done = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == "False", f"bnn_jax.deploy.{name} imports bnn_jax.train"


def test_images_of_the_wrong_shape_are_refused(test_config):
  engine = inference.Engine(lowering.lower(vgg(test_config), (12, 12, 3)))
  with pytest.raises(InputError, match=r"shape \(12, 12, 1\); this model takes \(12, 12, 3\)"):
    engine.logits(np.zeros((2, 12, 12, 1), np.uint8))


def test_unknown_op_kind_is_refused(test_config):
  program = lowering.lower(vgg(test_config), (12, 12, 3))
  program.ops[1].kind = "softplus"
  with pytest.raises(InputError, match="unknown kind 'softplus'"):
    inference.Engine(program)


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_trained_fashion_mnist_engine_matches_the_training_evaluation(fashion_mnist_small_run):
  """VGG-Small (width 1/4) trained for an epoch on the bundled Fashion-MNIST subset: the engine's
  top-1 on its 2,000 test images equals train.evaluate's, and every bit of every binary layer's
  input equals the training graph's, on every test image."""
  from bnn_jax.data import sources
  from bnn_jax.deploy import export

  config, workdir, result = fashion_mnist_small_run
  assert result["count"] == 2_000
  program = export.program_of_workdir(workdir)
  _, spec, model = run.restore_model(workdir)
  ds = sources.load(config.data)
  assert len(ds.test_labels) == 2_000
  engine = inference.Engine(program)
  correct, compared = 0, 0
  for start in range(0, 2_000, 1000):
    batch = ds.test_images[start : start + 1000]
    correct += int(
      np.sum(np.argmax(engine.logits(batch), -1) == ds.test_labels[start : start + 1000])
    )
    compared += check_engine_matches(model, program, batch, engine=engine)
  assert correct == round(result["accuracy"] * result["count"])  # accuracy is a float32 ratio
  assert compared > 2_000 * 28 * 28 * 32
