"""The settings every ImageNet config shares (host-fed input, recipe); not an experiment itself.

configs/alexnet_imagenet.py, configs/resnet18_imagenet.py and their full-precision baselines
start from `get_config()` here. The data keys below belong to bnn_jax/imagenet_input.py.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.name = "resnet18"

  c.data.name = "imagenet2012"  # or "imagenet_synthetic": random JPEGs, no files
  c.data.tfds_data_dir = ""  # where `tfds build imagenet2012` put the prepared dataset
  c.data.manual_dir = ""  # ILSVRC2012_img_{train,val}.tar, for preparing it (one process)
  c.data.image_size = 224  # training crop and evaluation crop, pixels
  c.data.eval_resize = 256  # evaluation: shorter side resized to this, then center crop
  c.data.shuffle_buffer = 16_384  # examples, per process
  c.data.num_threads = 0  # tf.data decoding threads per process; 0 = one per core
  c.data.prefetch_batches = 2  # global batches transferred to the devices ahead of the step
  c.data.synthetic_image_shape = (375, 500)  # height, width of the synthetic JPEGs
  c.data.synthetic_num_images = 256  # distinct synthetic JPEGs (repeated)
  c.data.synthetic_num_classes = 1000
  c.data.synthetic_train_size = 1_281_167  # as ImageNet's train split
  c.data.synthetic_eval_size = 50_000  # as ImageNet's validation split

  # The recipe is not recovered from the paper [R]: Adam, cosine to 0, docs/method.md's
  # lambda_alpha for ImageNet; light weight decay on the full-precision stem and head only.
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_epochs = 1.0
  c.optimizer.weight_decay = 5e-5
  c.optimizer.scale_l2 = 1e-4
  c.batch_size = 256  # global, over all devices and processes
  c.eval_batch_size = 1024
  c.num_epochs = 100.0
  c.log_every_steps = 100
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 2000  # about 0.4 epochs at batch 256
  c.keep_checkpoints = 3
  return c
