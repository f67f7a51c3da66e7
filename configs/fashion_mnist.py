"""A small binary VGG-Small (width 1/4) on Fashion-MNIST: real data, minutes on a 2-core CPU.

Command (Fashion-MNIST from the Debian package dataset-fashion-mnist):
  python -m bnn_jax.main --config=configs/fashion_mnist.py --workdir=/tmp/fashion_mnist

Full precision, the same network: add --config.model.binary=False.
Expected: see the README's results table (measured with this config).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.width = 0.25  # channels 32, 32, 64, 64, 128, 128
  c.data.name = "fashion_mnist"
  c.data.augment = "flip"
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 3.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  return c
