"""Full-precision AlexNet (with BatchNorm) on ImageNet: the baseline of alexnet_imagenet.py.

Command:
  python -m bnn_jax.main --config=configs/alexnet_imagenet_fp.py \
    --workdir=/tmp/alexnet_imagenet_fp --config.data.tfds_data_dir=DATA

The same network (ReLU activations) and recipe as the binary run. Expected: the paper gives no
full-precision ImageNet figure; torchvision's AlexNet (no BatchNorm, its own recipe) reaches
56.5 % top-1, a reference rather than a target. NOT RUN HERE (one step on mock data in
tests/test_imagenet_input.py only).
"""

from configs import imagenet_base


def get_config():
  c = imagenet_base.get_config()
  c.model.name = "alexnet"
  c.model.binary = False
  c.optimizer.scale_l2 = 0.0
  c.optimizer.clip_latent_weights = False
  return c
