"""Binary VGG-Small on CIFAR-10, distilled from a trained float VGG-Small (knowledge distillation).

Commands (the teacher first; it must be a finished run on the same data):
  python -m bnn_jax.main --config=configs/vgg_small_fp.py --workdir=/tmp/vgg_small_fp
  python -m bnn_jax.main --config=configs/vgg_small_kd.py --workdir=/tmp/vgg_small_kd \
    --config.distill.teacher_workdir=/tmp/vgg_small_fp

The default recipe (configs/vgg_small.py: Adam 1e-3 cosine over 200 epochs, batch 128) with
the loss
  (1 - w) * CE + w * T^2 * KL(softmax(teacher / T) || softmax(student / T)),  w = 0.9, T = 4,
the teacher's logits computed in eval mode inside the same jitted step, on the same augmented
images. Any finished float run of the same data can teach (e.g. configs/vgg_small_sgd_fp.py);
the teacher folder defaults to /tmp/vgg_small_fp, the first command's. Why: the default recipe
overfits (99.2 % train accuracy), and the teacher's soft targets carry more than the labels.
Change w and T with --config.distill.weight and --config.distill.temperature.

Expected: not measured yet (a GPU session will). For reference, on one H200 and a lossy JPEG
copy of CIFAR-10 the default recipe reached 87.3 % after 141 epochs and the float teacher
(configs/vgg_small_fp.py) 89.4 %.
"""

from configs import vgg_small


def get_config():
  c = vgg_small.get_config()
  c.distill.teacher_workdir = "/tmp/vgg_small_fp"  # override on the command line
  c.distill.weight = 0.9
  c.distill.temperature = 4.0
  return c
