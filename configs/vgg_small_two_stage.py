"""Binary VGG-Small on CIFAR-10 in two stages: binary activations first, then binary weights.

Commands (stage 2 starts from stage 1's final checkpoint):
  python -m bnn_jax.main --config=configs/vgg_small_two_stage.py:1 \
    --workdir=/tmp/vgg_small_two_stage_1
  python -m bnn_jax.main --config=configs/vgg_small_two_stage.py:2 \
    --workdir=/tmp/vgg_small_two_stage_2

The same in one command: python -m bnn_jax.main --config=configs/vgg_small.py \
  --config.init.stage1_epochs=200 --workdir=/tmp/vgg_small_two_stage (stage 1 in WORKDIR/stage1).

Stage 1 trains the network with binary activations and float weights
(`model.binary_weights = False`: float kernels where the binary net has binary ones, the same
names and shapes), stage 2 the binary network (`model.binary_weights = True`) from stage 1's
weights (`init.from_workdir`): every parameter and BatchNorm statistic is copied, the latent
binary weights are stage 1's float kernels and each weight scale alpha starts at mean |W| of
them; the optimizer starts fresh. A resumed stage 2 resumes from its own checkpoint. Each stage
is the default recipe (configs/vgg_small.py: Adam 1e-3 cosine, 200 epochs, batch 128). Why: the
weights learn under binary activations first, so that binarizing them later costs less than
learning both at once (Real-to-Binary, ReActNet train this way). Stage 2 reads stage 1 from
/tmp/vgg_small_two_stage_1; another folder: --config.init.from_workdir=FOLDER.

Expected: not measured yet (a GPU session will). For reference, on one H200 and a lossy JPEG
copy of CIFAR-10 the one-stage default recipe reached 87.3 % after 141 epochs.
"""

from configs import vgg_small

STAGE_1_WORKDIR = "/tmp/vgg_small_two_stage_1"


CONFIG_ARGUMENTS = ("1", "2")  # --config=configs/vgg_small_two_stage.py:1 (or :2)


def get_config(stage: str = ""):
  """stage "1" (binary activations, float weights) or "2" (binary, from stage 1)."""
  if stage not in ("1", "2"):
    raise ValueError(
      f"configs/vgg_small_two_stage.py takes the stage after a colon, "
      f"--config=configs/vgg_small_two_stage.py:1 or :2; got {stage!r}"
    )
  c = vgg_small.get_config()
  c.model.binary_weights = stage == "2"
  if stage == "2":
    c.init.from_workdir = STAGE_1_WORKDIR
  return c
