"""What each part of trained binarization buys: a seeded ablation ladder on Fashion-MNIST.

Command (about an hour on a shared 2-core CPU: 10 variants x 3 seeds, about 2 minutes a run):
  python -m launch.ablation --config=configs/ablation_fashion_mnist.py \
    --output=/tmp/ablation_fashion_mnist_30k --seeds=0,1,2

`get_config()` is the base every variant starts from: a binary VGG-Small of width 1/8
(channels 16, 16, 32, 32, 64, 64) trained for one epoch on the first 30,000 training images
(234 steps of 128) and evaluated on all 10,000 test images, with the paper's full recipe
(docs/method.md, configs/base.py).
It derives from configs/base.py directly, not from configs/fashion_mnist.py, so that changing
that config's default recipe does not change this table.

`sweep()` returns the variants as a list of (name, overrides) pairs; overrides map dotted config
keys to values and are applied on top of `get_config()` and any command-line overrides. The
ladder changes one thing per rung, so neighbouring rows isolate one component:

  float                 the same network in full precision (ReLU, float weights)
  bnn                   BNN baseline: sign activations {-1, +1}, clipped STE for weights and
                        activations, no scales, no scale L2
  xnor_alpha            bnn + fixed weight scales alpha = mean |W| per channel (XNOR-Net style;
                        weights only, XNOR-Net's activation scaling is not part of this ladder)
  trained_alpha         bnn + trainable alpha (init mean |W|), no L2
  trained_alpha_beta    trained_alpha + trainable beta
  paper_estimators      trained_alpha_beta + the paper's binarizer: step activations {0, beta}
                        with the long-tailed estimator, higher-order weight estimator; no L2
                        (the long-tailed estimator is defined for H, so the activation function
                        changes together with the estimator)
  paper                 paper_estimators + L2 on alpha (5e-4) in the loss: the paper's recipe
  paper_decoupled_l2    paper with the L2 applied AdamW-style (decoupled)
  approx_sign           paper_estimators with Bi-Real's ApproxSign for weights and activations
  swish_sign            paper_estimators with BNN+'s SwishSign for weights and activations

Expected: see the README's ablation section (measured with this config and command).
"""

from configs import base

_NO_SCALES = {
  "binary.weight_scale": "none",
  "binary.activation_scale": "none",
  "optimizer.scale_l2": 0.0,
}
_BNN = {
  **_NO_SCALES,
  "binary.activation_mode": "sign",
  "binary.activation_estimator": "ste",
  "binary.weight_estimator": "ste",
}
_TRAINED_ALPHA = {**_BNN, "binary.weight_scale": "trainable"}
_TRAINED_ALPHA_BETA = {**_TRAINED_ALPHA, "binary.activation_scale": "trainable"}
_PAPER_ESTIMATORS = {
  **_TRAINED_ALPHA_BETA,
  "binary.activation_mode": "step",
  "binary.activation_estimator": "long_tailed",
  "binary.weight_estimator": "higher_order",
}
_PAPER = {**_PAPER_ESTIMATORS, "optimizer.scale_l2": 5e-4, "optimizer.scale_l2_mode": "coupled"}


def get_config():
  c = base.get_config()
  c.model.width = 0.125  # channels 16, 16, 32, 32, 64, 64
  c.data.name = "fashion_mnist"
  c.data.augment = "flip"
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.data.train_subset = 30_000  # half of the training set: 30 runs fit in an hour on 2 cores
  c.num_epochs = 1.0  # 234 steps
  c.eval_every_epochs = 1.0  # once, at the end, on all 10,000 test images
  c.log_every_steps = 50
  c.checkpoint_every_steps = 100  # an interrupted run loses at most 100 steps
  # The paper's recipe, spelled out so that a change of configs/base.py shows up here.
  for key, value in _PAPER.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def sweep() -> list[tuple[str, dict]]:
  """The ablation ladder: [(variant name, {dotted config key: value}), ...] in table order."""
  return [
    (
      "float",
      {"model.binary": False, "optimizer.scale_l2": 0.0, "optimizer.clip_latent_weights": False},
    ),
    ("bnn", dict(_BNN)),
    ("xnor_alpha", {**_BNN, "binary.weight_scale": "mean_abs"}),
    ("trained_alpha", dict(_TRAINED_ALPHA)),
    ("trained_alpha_beta", dict(_TRAINED_ALPHA_BETA)),
    ("paper_estimators", dict(_PAPER_ESTIMATORS)),
    ("paper", dict(_PAPER)),
    ("paper_decoupled_l2", {**_PAPER, "optimizer.scale_l2_mode": "decoupled"}),
    (
      "approx_sign",
      {
        **_PAPER_ESTIMATORS,
        "binary.activation_estimator": "approx_sign",
        "binary.weight_estimator": "approx_sign",
      },
    ),
    (
      "swish_sign",
      {
        **_PAPER_ESTIMATORS,
        "binary.activation_estimator": "swish_sign",
        "binary.weight_estimator": "swish_sign",
      },
    ),
  ]
