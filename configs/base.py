"""The common base of every config: the paper's recipe (docs/method.md) with every switch named.

Experiment configs start from `get_config()` here and change what differs. Every [R] choice of
docs/method.md is a value below that can be overridden from the command line, e.g.
`--config.binary.weight_estimator=ste`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "vgg_small"  # see bnn_jax.models.MODELS
  c.model.binary = True  # False: the same network in full precision with ReLU
  c.model.width = 1.0  # channel multiplier
  c.model.final_activation = "relu"  # before the final dense layer: "relu" or "binary"
  # With model.binary: True = binary weights; False = float weights with binary activations
  # (stage 1 of two-stage training, configs/vgg_small_two_stage.py). Ignored by float models.
  c.model.binary_weights = True

  c.binary = ml_collections.ConfigDict()
  c.binary.weight_estimator = "higher_order"  # bnn_jax.binary.ESTIMATORS
  c.binary.weight_scale = "trainable"  # alpha: "trainable", "mean_abs" (fixed, XNOR), "none"
  c.binary.weight_scale_per = "channel"  # "channel" or "layer"
  c.binary.weight_scale_init = "mean_abs"  # "mean_abs" of the channel's latent weights, or "one"
  c.binary.activation_mode = "step"  # "step": {0, beta}; "sign": {-beta, +beta}
  c.binary.activation_estimator = "long_tailed"
  c.binary.activation_scale = "trainable"  # beta: "trainable" or "none"
  c.binary.beta_init = 1.0

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"  # bnn_jax.in_memory.DATASETS
  c.data.path = ""  # folder of IDX or .npz files (fashion_mnist, mnist, npz)
  c.data.tfds_data_dir = ""  # tfds data_dir; "" = tfds default
  c.data.manual_dir = ""  # offline CIFAR-10: folder holding cifar-10-binary.tar.gz
  c.data.augment = "crop_flip"  # "crop_flip", "crop", "flip" or "none"
  # Against overfitting, after crop/flip, all off by default (bnn_jax/data/in_memory.py):
  c.data.cutout = 0  # int >= 0: side (pixels) of a square set to the mean pixel per image; 0 = off
  c.data.mixup_alpha = 0.0  # float >= 0: mixup, lam ~ Beta(alpha, alpha) per batch; 0 = off
  c.data.cutmix_alpha = 0.0  # float >= 0: CutMix, box of area share ~ Beta(alpha, alpha); 0 = off
  # (at most one of mixup_alpha and cutmix_alpha > 0)
  c.data.train_subset = 0  # >0: train on the first N training examples only
  c.data.fake_image_shape = (8, 8, 3)
  c.data.fake_num_classes = 4
  c.data.fake_train_size = 64
  c.data.fake_test_size = 40
  c.data.fake_seed = 0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"  # "adam" or "sgd" (with momentum)
  c.optimizer.learning_rate = 1e-3
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.schedule = "cosine"  # "cosine" (to 0), "step" or "constant"
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.decay_epochs = (100.0, 150.0)  # schedule "step": multiply by decay_factor here
  c.optimizer.decay_factor = 0.1
  c.optimizer.weight_decay = 5e-4  # L2 on full-precision kernels only
  c.optimizer.scale_l2 = 5e-4  # lambda_alpha: lambda * sum(alpha ** 2) over weight scales
  c.optimizer.scale_l2_mode = "coupled"  # "coupled" (in the gradient) or "decoupled" (AdamW)
  c.optimizer.clip_latent_weights = True  # latent binary weights kept in [-1, 1]
  c.optimizer.grad_clip_norm = 0.0  # 0 = off
  c.optimizer.label_smoothing = 0.0  # e in [0, 1): targets (1 - e) * onehot + e / classes; 0 = off
  c.optimizer.latent_weight_decay = 0.0  # L2 in the gradient on latent binary weights; 0 = off

  # Knowledge distillation from a finished run of the same data (a float teacher, usually):
  # loss = (1 - weight) * CE + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)).
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher_workdir = ""  # the teacher's workdir; "" = off
  c.distill.weight = 0.9  # in [0, 1]: the share of the KD term in the loss
  c.distill.temperature = 4.0  # T > 0: softens both distributions

  # Start from another run's parameters (stage 2 of two-stage training): every parameter and
  # BatchNorm statistic whose path and shape match is copied, the rest starts fresh. Only when
  # the workdir has no checkpoint of its own (a resumed run resumes from its own).
  c.init = ml_collections.ConfigDict()
  c.init.from_workdir = ""  # a finished run of the same data; "" = off
  # Two-stage training in one command: > 0 first trains stage 1 (model.binary_weights False:
  # float weights, binary activations) for this many epochs in WORKDIR/stage1, then this config
  # from it (init.from_workdir = WORKDIR/stage1). Needs a binary model; not with from_workdir.
  c.init.stage1_epochs = 0.0  # float >= 0; 0 = off

  c.batch_size = 128  # global, over all devices and processes
  c.eval_batch_size = 500
  c.num_epochs = 200.0
  c.max_steps = 0  # >0: stop after this many steps (the schedule still spans num_epochs)
  c.compute_dtype = "float32"  # "float32" or "bfloat16" (master weights stay float32)
  c.grad_accum_steps = 1  # >1: each step's batch runs in this many microbatches, one update
  # Train steps per jitted call (a jax.lax.fori_loop over them): fewer dispatches and host round
  # trips per step. The same batches and updates as 1, and runs of one value repeat bit for bit,
  # but not the bits of 1: XLA compiles a step inside a loop with other fusions, so other orders
  # of float sums. On the test config the float net's losses agree with 1's to 3.5e-7 relative;
  # the binary net's first losses agree, then a flipped sign makes them drift (1-14 % apart from
  # step 3 to 12). In-memory data only; host-fed data (ImageNet) feeds one step per call and
  # must keep 1.
  c.steps_per_call = 1

  c.log_every_steps = 100
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  return c
