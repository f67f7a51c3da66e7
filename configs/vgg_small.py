"""Binary VGG-Small on CIFAR-10 with trained binarization: the paper's setup (PAPER.md).

Command:
  python -m bnn_jax.main --config=configs/vgg_small.py --workdir=/tmp/vgg_small

Expected: the paper reports 92.3 % top-1 on the CIFAR-10 test set (1-bit weights and activations,
first and last layer full precision). This codebase has not yet measured a full 200-epoch run
(it needs a GPU: XLA on a 2-core CPU trains about 12 images/s); see the README for what has been
measured. Offline: put cifar-10-binary.tar.gz in a folder and add
`--config.data.manual_dir=FOLDER`.
"""

from configs import base


def get_config():
  return base.get_config()
