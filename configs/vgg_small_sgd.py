"""Binary VGG-Small on CIFAR-10 with the published anchors' recipe: SGD, lr 0.1, 400 epochs.

Command:
  python -m bnn_jax.main --config=configs/vgg_small_sgd.py --workdir=/tmp/vgg_small_sgd

The default recipe (configs/vgg_small.py: trained binarization, decoupled scale L2, crop+flip)
with the optimizer of the binary VGG-Small results that reach 90.4-92.5 % on CIFAR-10: SGD with
momentum 0.9, learning rate 0.1 cosine-annealed to 0 over 400 epochs (no warmup), batch 256
(195 steps an epoch, 78,000 steps), weight decay 5e-4.

Weight decay 5e-4 on the float kernels (conv0, head) AND on the latent binary weights
(`optimizer.latent_weight_decay`). Why: the anchors use PyTorch's SGD weight decay, which
reaches every weight, latent ones included; and a latent weight's magnitude is the inertia of
its sign (Helwegen et al. 2019): over 78,000 steps at lr 0.1 undecayed latent weights drift to
the clip at +-1, where a sign flips only after a long run of same-signed gradients, while the
decay keeps them near 0, where a sign still follows its gradient. To compare, add
`--config.optimizer.latent_weight_decay=0.0`.

Expected: not measured yet (a GPU session will). For reference, on one H200 and a lossy JPEG
copy of CIFAR-10 the default Adam recipe reached 87.3 % after 141 epochs, overfitting (99.2 %
train accuracy), and the float network 89.4 %. Float twin: configs/vgg_small_sgd_fp.py.
"""

from configs import vgg_small


def get_config():
  c = vgg_small.get_config()
  c.optimizer.name = "sgd"
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.learning_rate = 0.1
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.weight_decay = 5e-4  # float kernels
  c.optimizer.latent_weight_decay = 5e-4  # latent binary weights: see the docstring
  c.batch_size = 256
  c.num_epochs = 400.0
  return c
