"""Full-precision VGG-Small on CIFAR-10 with the SGD recipe of configs/vgg_small_sgd.py.

Command:
  python -m bnn_jax.main --config=configs/vgg_small_sgd_fp.py --workdir=/tmp/vgg_small_sgd_fp

The float twin of configs/vgg_small_sgd.py (ReLU, float weights; SGD momentum 0.9, lr 0.1
cosine over 400 epochs, batch 256, weight decay 5e-4 on every kernel): the baseline of that
recipe, and a teacher for configs/vgg_small_kd.py (`--config.distill.teacher_workdir=` this
workdir).

Expected: not measured yet (a GPU session will). Published float VGG-Small results on CIFAR-10
are about 93.8-94 %; on a lossy JPEG copy of CIFAR-10 the float network with the Adam recipe
(configs/vgg_small_fp.py) reached 89.4 % (one H200).
"""

from configs import vgg_small_sgd


def get_config():
  c = vgg_small_sgd.get_config()
  c.model.binary = False
  c.optimizer.scale_l2 = 0.0
  c.optimizer.clip_latent_weights = False
  c.optimizer.latent_weight_decay = 0.0  # no latent weights
  return c
