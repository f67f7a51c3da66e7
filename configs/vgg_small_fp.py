"""Full-precision VGG-Small on CIFAR-10: the baseline of configs/vgg_small.py (ReLU, float weights).

Command:
  python -m bnn_jax.main --config=configs/vgg_small_fp.py --workdir=/tmp/vgg_small_fp

Expected: about 93.8-94 % top-1 (docs/method.md); not yet measured here.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.binary = False
  c.optimizer.scale_l2 = 0.0
  c.optimizer.clip_latent_weights = False
  return c
