"""A bfloat16 train step of the binary VGG-Small on CIFAR-10 shapes (32x32x3, 10 classes) trains
on the CPU: the loss finite and falling, parameters and optimizer state kept in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import optim, run, train
from bnn_jax.data import DataSpec
from configs import vgg_small


@pytest.mark.slow  # compiles a bfloat16 VGG-Small train step (width 1/8)
def test_bfloat16_vgg_small_step_trains_with_float32_state():
  config = vgg_small.get_config()
  config.model.width = 1 / 8  # channels 16-64: the shape of configs/vgg_small.py, narrower
  config.compute_dtype = "bfloat16"
  spec = DataSpec(10, (32, 32, 3), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
  tx, schedule = optim.make(config, steps_per_epoch=390)
  graphdef, state = run.init_state(config, spec, tx, run.make_mesh())
  step = jax.jit(train.make_update(graphdef, tx, schedule, config, spec), donate_argnums=0)
  rng = np.random.default_rng(0)
  # A learnable batch: the class shifts the image's brightness.
  labels = rng.integers(0, 10, 32).astype(np.int32)
  images = np.clip(rng.normal(20 * labels[:, None, None, None] + 30, 20, (32, 32, 32, 3)), 0, 255)
  images, labels = jnp.asarray(images.astype(np.uint8)), jnp.asarray(labels)
  losses = []
  for _ in range(8):
    state, metrics = step(state, images, labels)
    losses.append(float(metrics["ce"]))
  assert np.all(np.isfinite(losses)) and metrics["loss"].dtype == jnp.float32
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
  for part in ("params", "opt_state"):
    floats = [x for x in jax.tree.leaves(state[part]) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats), part
