"""Binary AlexNet on ImageNet with trained binarization (docs/method.md): the paper's 46.1 % top-1.

Command (one process; launch/ runs it on several GPUs, a SLURM cluster or a TPU pod slice):
  python -m bnn_jax.main --config=configs/alexnet_imagenet.py --workdir=/tmp/alexnet_imagenet \
    --config.data.tfds_data_dir=DATA
where DATA holds imagenet2012 prepared by `tfds build imagenet2012 --manual_dir=FOLDER
--data_dir=DATA`.

Expected: the paper reports 46.1 % top-1 on the validation set (XNOR-Net-style AlexNet with
BatchNorm; conv2-5, fc6 and fc7 binary; conv1 and fc8 full precision). NOT RUN HERE: this
codebase has run this config only for one step on mock data (tests/test_imagenet_input.py); the
recipe is a reconstruction [R]. Switches: --config.compute_dtype=bfloat16,
--config.grad_accum_steps=K.
"""

from configs import imagenet_base


def get_config():
  c = imagenet_base.get_config()
  c.model.name = "alexnet"
  return c
