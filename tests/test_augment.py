"""The augmentation switches against overfitting: cutout, mixup, cutmix (bnn_jax/data/in_memory.py)
and the mixed cross-entropy (bnn_jax/train.py): exact images, exact losses, the step's keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnn_jax import config_checks, run, train
from bnn_jax.data import in_memory, sources
from bnn_jax.errors import InputError


def _images(n=64, size=12, low=1, seed=0):
  """uint8 [n, size, size, 3] with no pixel value below `low` (so a zeroed pixel shows)."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(low, 256, (n, size, size, 3), dtype=np.uint8))


def _interval(flags):
  """(start, stop) of the True entries of a 1-D bool array, asserted contiguous."""
  (where,) = np.nonzero(flags)
  assert len(where) and np.all(np.diff(where) == 1), flags
  return where[0], where[-1] + 1


# ----------------------------------------------------------------------------- cutout


@pytest.mark.parametrize("size", [4, 5])
def test_cutout_sets_one_clipped_square_per_image_and_leaves_the_rest(size):
  x = _images()
  fill = jnp.array([0, 0, 0], jnp.uint8)
  out = np.asarray(in_memory.cutout(x, jax.random.key(3), size, fill))
  x = np.asarray(x)
  assert out.dtype == np.uint8 and out.shape == x.shape
  square = np.all(out == 0, axis=-1)  # x has no zero: exactly the pixels set
  height = x.shape[1]
  full = 0
  for i in range(len(x)):
    (r0, r1), (c0, c1) = _interval(square[i].any(1)), _interval(square[i].any(0))
    expect = np.zeros_like(square[i])
    expect[r0:r1, c0:c1] = True
    np.testing.assert_array_equal(square[i], expect)  # a rectangle, nothing else
    for a, b in ((r0, r1), (c0, c1)):  # a square of side `size` around some centre, clipped
      assert any(
        (max(0, c - size // 2), min(height, c - size // 2 + size)) == (a, b) for c in range(height)
      ), (i, a, b)
    full += (r1 - r0, c1 - c0) == (size, size)
    np.testing.assert_array_equal(out[i][~square[i]], x[i][~square[i]])
  assert 0 < full < len(x)  # some squares whole, some clipped: the centres vary


def test_cutout_fills_with_the_given_pixel_and_follows_its_key():
  x = _images(n=16)
  fill = jnp.array([125, 123, 114], jnp.uint8)
  a = np.asarray(in_memory.cutout(x, jax.random.key(0), 6, fill))
  changed = np.any(a != np.asarray(x), axis=-1)
  assert changed.sum() >= 16 * 9  # every image: at least a 3x3 corner of the square
  np.testing.assert_array_equal(a[changed], np.broadcast_to(fill, a[changed].shape))
  np.testing.assert_array_equal(a, in_memory.cutout(x, jax.random.key(0), 6, fill))
  assert np.any(a != np.asarray(in_memory.cutout(x, jax.random.key(1), 6, fill)))


# ----------------------------------------------------------------------------- mixup


def test_mixup_mixes_each_image_with_its_partner():
  x = _images(n=32, low=0)
  out, lam, perm = in_memory.mixup(x, jax.random.key(1), 0.4)
  lam, perm = float(lam), np.asarray(perm)
  np.testing.assert_array_equal(np.sort(perm), np.arange(32))
  assert 0 < lam < 1 and np.any(perm != np.arange(32))
  xf = np.asarray(x, np.float32)
  np.testing.assert_allclose(out, lam * xf + (1 - lam) * xf[perm], rtol=1e-6, atol=1e-4)
  assert out.dtype == jnp.float32
  assert np.abs(np.asarray(out) - xf).max() > 1  # not a no-op
  lams = [float(in_memory.mixup(x, jax.random.key(k), 0.4)[1]) for k in range(20)]
  assert len(set(lams)) == 20 and min(lams) < 0.3 and max(lams) > 0.7  # Beta(0.4, 0.4): U-shaped


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_loss_is_the_lam_weighted_cross_entropy(test_config, smoothing):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(8, 5)).astype(np.float32)
  labels, partners = rng.integers(0, 5, 8), rng.integers(0, 5, 8)
  lam = np.full(8, 0.3, np.float32)
  test_config.optimizer.label_smoothing = smoothing
  mix = {"labels": jnp.asarray(partners), "lam": jnp.asarray(lam)}
  loss, parts = train.training_loss(
    jnp.asarray(logits), jnp.asarray(labels), None, test_config.optimizer, None, mix
  )

  def ce(y, e):  # -sum_k q_k log p_k with q = (1 - e) onehot + e / K
    q = (1 - e) * np.eye(5)[y] + e / 5
    return -(q * _log_softmax(logits)).sum(-1)

  np.testing.assert_allclose(
    loss, np.mean(0.3 * ce(labels, smoothing) + 0.7 * ce(partners, smoothing)), rtol=1e-5
  )
  np.testing.assert_allclose(
    parts["ce"], np.mean(0.3 * ce(labels, 0) + 0.7 * ce(partners, 0)), rtol=1e-5
  )
  plain, _ = train.training_loss(
    jnp.asarray(logits), jnp.asarray(labels), None, test_config.optimizer, None
  )
  np.testing.assert_allclose(plain, np.mean(ce(labels, smoothing)), rtol=1e-5)


# ----------------------------------------------------------------------------- cutmix


def test_cutmix_pastes_one_box_from_the_partner_and_lam_is_the_area_left():
  n, size = 16, 12
  # Image i is the constant i + 1: a pixel tells which image it came from.
  x = jnp.asarray(
    np.broadcast_to(np.arange(1, n + 1, dtype=np.uint8)[:, None, None, None], (n, size, size, 3))
  )
  areas = []
  for k in range(12):
    out, lam, perm = in_memory.cutmix(x, jax.random.key(k), 1.0)
    out, lam, perm = np.asarray(out), float(lam), np.asarray(perm)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    assert out.dtype == np.uint8
    from_partner = out[..., 0] == (perm + 1)[:, None, None]
    box = from_partner[np.argmax(perm != np.arange(n))]  # an image whose partner is another one
    for i in range(n):
      if perm[i] != i:
        np.testing.assert_array_equal(from_partner[i], box)  # one box for the batch
      np.testing.assert_array_equal(out[i][~box], np.asarray(x)[i][~box])  # the rest: original
    if box.any():
      (r0, r1), (c0, c1) = _interval(box.any(1)), _interval(box.any(0))
      assert box.sum() == (r1 - r0) * (c1 - c0)  # a rectangle
    np.testing.assert_allclose(lam, 1 - box.sum() / size**2, rtol=1e-6)
    areas.append(box.sum())
  assert len(set(areas)) > 3 and max(areas) > 0  # boxes of varying size, not a no-op


# ----------------------------------------------------------------------------- in the train step


def _feed_outputs(config, start, steps_per_call=1, calls=1):
  """What the update sees at steps start.. (images, labels, mix), through InMemoryFeed's step."""
  feed = in_memory.InMemoryFeed(config, run.make_mesh())

  def update(state, images, labels, teacher=None, mix=None):
    seen = {"images": images.astype(jnp.float32), "labels": labels}
    if mix is not None:
      seen |= {"partners": mix["labels"], "lam": mix["lam"]}
    return {"step": state["step"] + 1}, seen

  step = feed.train_step(update, start, None, steps_per_call)
  state, out = {"step": jnp.asarray(start, jnp.int32)}, []
  for _ in range(calls):
    state, seen = step(state, steps_per_call)
    out.append(jax.device_get(seen))
  return out


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_the_steps_take_the_batches_of_their_epochs_permutation(test_config, steps_per_call):
  """Calls from step 3 through three epochs (4 steps each; the permutation is drawn once an
  epoch, outside the step): each step's images are those train_batch_indices picks."""
  test_config.data.augment = "none"
  calls = 9 // steps_per_call
  out = _feed_outputs(test_config, 3, steps_per_call, calls)
  rows = (lambda o: [o["images"]]) if steps_per_call == 1 else (lambda o: list(o["images"]))
  seen = [images for o in out for images in rows(o)]
  ds = sources.load_fake(test_config.data)
  key = jax.random.split(jax.random.key(test_config.seed))[0]
  for i, images in enumerate(seen):
    idx = in_memory.train_batch_indices(3 + i, len(ds.train_labels), test_config.batch_size, key)
    np.testing.assert_array_equal(images, ds.train_images[np.asarray(idx)], err_msg=f"step {3 + i}")
  assert len(seen) == 9 and np.any(seen[1] != seen[5])  # steps 4 and 8: same place, new epoch


@pytest.mark.parametrize("switch", ["cutout", "mixup_alpha", "cutmix_alpha"])
def test_the_step_counter_decides_the_augmentation(test_config, switch):
  """Same step: the same batch (a resumed run sees what the first saw); steps in a call of 3
  see what 3 calls of one see; another step: another batch; the switch changes the images."""
  test_config.data[switch] = 4 if switch == "cutout" else 1.0
  once, again = _feed_outputs(test_config, 5)[0], _feed_outputs(test_config, 5)[0]
  jax.tree.map(np.testing.assert_array_equal, once, again)
  singles = _feed_outputs(test_config, 5, calls=3)
  looped = _feed_outputs(test_config, 5, steps_per_call=3)[0]
  for i, single in enumerate(singles):
    for key, value in single.items():
      np.testing.assert_array_equal(looped[key][i], value)  # bit for bit
  assert np.any(singles[1]["images"] != once["images"])
  test_config.data[switch] = 0 if switch == "cutout" else 0.0
  plain = _feed_outputs(test_config, 5)[0]
  np.testing.assert_array_equal(plain["labels"], once["labels"])  # the same examples...
  assert np.any(plain["images"] != once["images"]) and "lam" not in plain  # ...augmented more
  if switch != "cutout":
    assert np.any(once["partners"] != once["labels"]) and "lam" in once


# ----------------------------------------------------------------------------- config rules


def test_mixup_and_cutmix_together_are_refused(test_config):
  test_config.data.mixup_alpha, test_config.data.cutmix_alpha = 0.2, 1.0
  with pytest.raises(InputError, match="mixup_alpha = 0.2 and config.data.cutmix_alpha = 1.0"):
    config_checks.check_config(test_config, 1)
  test_config.data.cutmix_alpha = 0.0
  config_checks.check_config(test_config, 1)
  test_config.data.cutout = -1
  with pytest.raises(InputError, match="cutout = -1 is not allowed"):
    config_checks.check_config(test_config, 1)


def test_host_fed_data_refuses_the_switches():
  from configs import resnet18_imagenet

  config = resnet18_imagenet.get_config()
  config.data.cutout = 16
  with pytest.raises(InputError, match="cutout = 16 is not supported for host-fed data"):
    config_checks.check_config(config, 1)


# ----------------------------------------------------------------------------- training


@pytest.mark.slow  # three tiny training runs, a train and an eval step compiled each
@pytest.mark.parametrize(
  "switch, value, extra",
  [
    ("cutout", 2, {}),
    ("mixup_alpha", 0.4, {"grad_accum_steps": 2}),
    ("cutmix_alpha", 1.0, {"steps_per_call": 2}),
  ],
)
def test_tiny_training_run_learns_with_each_switch(tmp_path, test_config, switch, value, extra):
  test_config.data[switch] = value
  test_config.update(extra)
  test_config.num_epochs = 10.0  # 40 steps
  test_config.checkpoint_every_steps = 40
  train.train_and_evaluate(test_config, str(tmp_path))
  losses = [r["train/loss"] for r in run.MetricsLog(tmp_path).read() if "train/loss" in r]
  assert len(losses) == 40 and np.all(np.isfinite(losses))
  if switch != "mixup_alpha":  # mixed targets on 8x8 noise: 40 steps show no clear fall
    assert np.mean(losses[-10:]) < np.mean(losses[:10]), losses
