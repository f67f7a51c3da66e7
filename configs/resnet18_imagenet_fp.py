"""Full-precision ResNet-18 on ImageNet: the baseline of configs/resnet18_imagenet.py.

Command:
  python -m bnn_jax.main --config=configs/resnet18_imagenet_fp.py \
    --workdir=/tmp/resnet18_imagenet_fp --config.data.tfds_data_dir=DATA

The same network (pre-activation blocks, ReLU) and recipe as the binary run. Expected: the paper
gives no full-precision ImageNet figure; torchvision's ResNet-18 reaches 69.8 % top-1 with its
own recipe (SGD, 90 epochs), a reference rather than a target. NOT RUN HERE (one step on mock
data in tests/test_imagenet_input.py only).
"""

from configs import imagenet_base


def get_config():
  c = imagenet_base.get_config()
  c.model.name = "resnet18"
  c.model.binary = False
  c.model.shortcut = "block"
  c.model.downsample = "float"
  c.optimizer.scale_l2 = 0.0
  c.optimizer.clip_latent_weights = False
  return c
