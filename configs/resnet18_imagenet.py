"""Binary ResNet-18 on ImageNet, trained binarization (docs/method.md): the paper's 54.2 % top-1.

Command (one process; launch/ runs it on several GPUs, a SLURM cluster or a TPU pod slice):
  python -m bnn_jax.main --config=configs/resnet18_imagenet.py --workdir=/tmp/resnet18_imagenet \
    --config.data.tfds_data_dir=DATA
where DATA holds imagenet2012 prepared by `tfds build imagenet2012 --manual_dir=FOLDER
--data_dir=DATA` (FOLDER: ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar).

Expected: the paper reports 54.2 % top-1 on the validation set (1-bit weights and activations;
full-precision stem, 1x1 downsample shortcuts and final dense). NOT RUN HERE: this codebase has
run this config only for one step on mock data (tests/test_imagenet_input.py); the recipe below
is a reconstruction [R], so expect to tune it. Switches: --config.model.shortcut=bireal (a
shortcut around every conv), --config.model.downsample=binary, --config.compute_dtype=bfloat16,
--config.grad_accum_steps=K (the global batch in K microbatches).
"""

from configs import imagenet_base


def get_config():
  c = imagenet_base.get_config()
  c.model.name = "resnet18"
  c.model.shortcut = "block"  # "block": one per two convs; "bireal": around every conv
  c.model.downsample = "float"  # 1x1 downsample convs: "float" or "binary"
  return c
