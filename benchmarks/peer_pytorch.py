"""Train-step throughput of bnn_jax against the same VGG-Small written in PyTorch, on this machine.

  pip install -e ".[bench]"   # torch; bnn_jax itself never imports it
  python benchmarks/peer_pytorch.py --batch_size=64 --steps=3 --repeats=3

One process times four train steps on the same random CIFAR-sized batch (32x32x3, 10 classes):
bnn_jax binary and float (the jitted, donated step of bnn_jax.train, as benchmarks/train_speed.py
builds it from --config) and their PyTorch peers, defined below. The timings are interleaved
(one timing of each in turn, --repeats rounds) so that load from other processes hits all four
alike; each figure is the median. Prints images/s, the ratio bnn_jax / PyTorch, the machine and
the load average.

The PyTorch nets follow bnn_jax's default config (configs/vgg_small.py) layer for layer:
full-precision first conv, then five times BatchNorm -> activation -> 3x3 conv (max-pool after
convs 1, 3, 5), BatchNorm, ReLU, a full-precision dense layer with bias. Binary: activations
beta * H(x) in {0, beta} with the long-tailed estimator and a trainable scalar beta; kernels
alpha * sign(W) with the higher-order estimator and a trainable alpha per output channel. Float:
ReLU and plain convs. Optimizer as bnn_jax's: Adam (lr 1e-3) with L2 5e-4 on the float kernels
in the gradient, decoupled 2 * 5e-4 on alpha, latent weights clipped to [-1, 1] after the step.
torch uses --torch_threads threads (default: all cores) and channels-last tensors, its faster
layout for CPU convolutions (--notorch_channels_last for NCHW).
"""

import os
import statistics
import sys

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import machine  # noqa: E402
import train_speed  # noqa: E402  (defines --config, --batch_size, --steps, --repeats, --variants)

FLAGS = flags.FLAGS
flags.DEFINE_integer("torch_threads", os.cpu_count(), "torch.set_num_threads.")
flags.DEFINE_bool("torch_channels_last", True, "PyTorch tensors in channels-last layout.")

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def torch_nets():
  """The PyTorch VGG-Small (binary and float) and its estimators; torch is imported here only."""
  import torch
  from torch import nn
  from torch.nn import functional as F

  class StepActivation(torch.autograd.Function):
    """beta * H(x); dx = g * beta * long_tailed(x), dbeta = sum(g * H(x))."""

    @staticmethod
    def forward(ctx, x, beta):
      ctx.save_for_backward(x, beta)
      return (x > 0).to(x.dtype) * beta

    @staticmethod
    def backward(ctx, g):
      x, beta = ctx.saved_tensors
      a = x.abs()
      estimator = torch.where(a <= 0.4, 2.0 - 4.0 * a, torch.where(a <= 1.0, 0.4, 0.0))
      return g * beta * estimator, (g * (x > 0).to(g.dtype)).sum().reshape(beta.shape)

  class SignWeight(torch.autograd.Function):
    """alpha * sign(w), sign(0) = +1; dw = g * alpha * max(0, 2 - 4|w|), dalpha = sum(g sign w)."""

    @staticmethod
    def forward(ctx, w, alpha):
      ctx.save_for_backward(w, alpha)
      return torch.where(w >= 0, 1.0, -1.0).to(w.dtype) * alpha

    @staticmethod
    def backward(ctx, g):
      w, alpha = ctx.saved_tensors
      sign = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
      dw = g * alpha * torch.clamp(2.0 - 4.0 * w.abs(), min=0.0)
      return dw, (g * sign).sum(dim=(1, 2, 3), keepdim=True)

  class BinaryActivation(nn.Module):
    def __init__(self):
      super().__init__()
      self.beta = nn.Parameter(torch.ones(()))

    def forward(self, x):
      return StepActivation.apply(x, self.beta)

  class BinaryConv(nn.Module):
    """3x3 conv, padding 1, no bias; latent weights [out, in, 3, 3] and alpha [out, 1, 1, 1]."""

    def __init__(self, cin, cout):
      super().__init__()
      w = torch.randn(cout, cin, 3, 3) / (9 * cin) ** 0.5
      self.weight = nn.Parameter(w)
      self.alpha = nn.Parameter(w.abs().mean(dim=(1, 2, 3), keepdim=True))

    def forward(self, x):
      return F.conv2d(x, SignWeight.apply(self.weight, self.alpha), padding=1)

  class VGGSmall(nn.Module):
    def __init__(self, binary: bool, channels=(128, 128, 256, 256, 512, 512)):
      super().__init__()
      self.binary = binary
      self.conv0 = nn.Conv2d(IMAGE_SHAPE[2], channels[0], 3, padding=1, bias=False)
      self.bns = nn.ModuleList(nn.BatchNorm2d(c, eps=1e-5, momentum=0.1) for c in channels)
      convs, acts = [], []
      for cin, cout in zip(channels[:-1], channels[1:]):
        conv = BinaryConv(cin, cout) if binary else nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        convs.append(conv)
        acts.append(BinaryActivation() if binary else nn.ReLU())
      self.convs, self.acts = nn.ModuleList(convs), nn.ModuleList(acts)
      side = IMAGE_SHAPE[0] // 8
      self.head = nn.Linear(side * side * channels[-1], NUM_CLASSES)

    def forward(self, x):
      x = self.conv0(x)
      for i, (bn, act, conv) in enumerate(zip(self.bns, self.acts, self.convs), start=1):
        x = conv(act(bn(x)))
        if i in (1, 3, 5):
          x = F.max_pool2d(x, 2)
      x = F.relu(self.bns[-1](x))
      return self.head(torch.flatten(x, 1))

  return VGGSmall


def torch_step(binary: bool, batch_size: int):
  """A closure running one PyTorch train step (forward, backward, Adam, clip) per call."""
  import torch

  torch.manual_seed(0)
  model = torch_nets()(binary)
  memory_format = torch.channels_last if FLAGS.torch_channels_last else torch.contiguous_format
  model = model.to(memory_format=memory_format).train()
  latent = [m.weight for m in model.modules() if type(m).__name__ == "BinaryConv"]
  alphas = [m.alpha for m in model.modules() if type(m).__name__ == "BinaryConv"]
  float_kernels = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim >= 2]
  float_kernels = [p for p in float_kernels if all(p is not q for q in latent)]
  grouped = {id(p) for p in latent + alphas + float_kernels}
  rest = [p for p in model.parameters() if id(p) not in grouped]
  # Adam's weight_decay is L2 in the gradient (optax add_decayed_weights before Adam); alpha's
  # decoupled L2 is a separate AdamW (2 * scale_l2, after the normalization).
  adam = torch.optim.Adam(
    [{"params": float_kernels, "weight_decay": 5e-4}, {"params": latent + rest}], lr=1e-3
  )
  adamw = torch.optim.AdamW(alphas, lr=1e-3, weight_decay=2 * 5e-4) if alphas else None
  gen = torch.Generator().manual_seed(0)
  images = torch.randn(batch_size, IMAGE_SHAPE[2], *IMAGE_SHAPE[:2], generator=gen)
  images = images.contiguous(memory_format=memory_format)
  labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=gen)

  def step():
    adam.zero_grad(set_to_none=True)
    if adamw:
      adamw.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    adam.step()
    if adamw:
      adamw.step()
    with torch.no_grad():
      for w in latent:
        w.clamp_(-1.0, 1.0)
    return loss

  return step


def main(argv):
  del argv
  import time

  import torch

  torch.set_num_threads(FLAGS.torch_threads)
  config = FLAGS.config
  batch, steps = FLAGS.batch_size, FLAGS.steps
  print(
    f"machine: {machine.describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads"
  )
  print(
    f"model {config.model.name} width {config.model.width}, batch {batch}, image "
    f"{'x'.join(map(str, IMAGE_SHAPE))}, {steps} steps x {FLAGS.repeats} timings (interleaved), "
    f"compute {config.compute_dtype}, torch layout "
    f"{'channels_last' if FLAGS.torch_channels_last else 'NCHW'}"
  )
  print(f"load average before: {os.getloadavg()}", flush=True)
  runners = {}
  for variant in FLAGS.variants:
    runners[("bnn_jax", variant)] = train_speed.prepare(config, variant, batch)
    torch_train = torch_step(variant == "binary", batch)
    torch_train()  # warm-up: oneDNN picks its kernels on the first call

    def run_torch(n, step=torch_train):
      start = time.perf_counter()
      for _ in range(n):
        loss = step()
      loss.item()
      return time.perf_counter() - start

    runners[("pytorch", variant)] = run_torch
  seconds = {key: [] for key in runners}
  for _ in range(FLAGS.repeats):
    for key, run in runners.items():
      seconds[key].append(run(steps))
  rates = {key: batch * steps / statistics.median(s) for key, s in seconds.items()}
  for variant in FLAGS.variants:
    ours, theirs = rates[("bnn_jax", variant)], rates[("pytorch", variant)]
    print(
      f"{variant:>6}: bnn_jax {ours:7.1f} images/s, PyTorch {theirs:7.1f} images/s, "
      f"bnn_jax / PyTorch {ours / theirs:.2f}"
    )
  print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
  from bnn_jax import cli  # absl's app.run, but --help exits 0 and bad flags with one sentence

  cli.run(main)
