"""A tiny binary VGG-Small on fake 8x8 data: a few seconds on one CPU core; for tests only.

Command:
  python -m bnn_jax.main --config=configs/test.py --workdir=/tmp/bnn_test
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.width = 1 / 16  # channels 8, 8, 16, 16, 32, 32
  c.data.name = "fake"
  c.data.augment = "crop_flip"
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_epochs = 3.0  # 4 steps an epoch: 12 steps
  c.log_every_steps = 2
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 4
  c.keep_checkpoints = 3
  return c
