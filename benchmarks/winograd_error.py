"""Rounding error of the float32 Winograd kernel gradient (bnn_jax.conv) and of XLA's float32
kernel gradient, against a float64 reference, on every model layer shape that takes Winograd.

  python benchmarks/winograd_error.py --batch_size=16

Each layer: x and the output gradient g drawn in float64 (x normal, or +-1 like a binary conv's
input; g normal), the float64 reference dw = lax's kernel gradient in float64, then
max |dw32 - dw| / max |dw| for conv._kernel_grad_winograd on the float32 copies and for lax's
float32 kernel gradient. Prints both and their ratio. Not a speed figure: any load will do.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import machine  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 16, "Images per layer.")
flags.DEFINE_integer("seeds", 2, "Random draws per layer and input kind (the worst is printed).")

# (net, spatial size, channels in, channels out): 3x3, stride 1, padding 1 - the layers of
# models.py whose kernel gradient winograd.applies() sends to Winograd at the default widths
# (AlexNet's 3x3 layers at 13x13 and ResNet-18's at 7x7 are not among them).
LAYERS = [
  ("vgg_small", 32, 128, 128),
  ("vgg_small", 16, 128, 256),
  ("vgg_small", 16, 256, 256),
  ("vgg_small", 8, 256, 512),
  ("vgg_small", 8, 512, 512),
  ("resnet18", 56, 64, 64),
  ("resnet18", 28, 128, 128),
  ("resnet18", 14, 256, 256),
]


def errors(size, cin, cout, binary_input, seed):
  """(Winograd's, lax's) float32 kernel-gradient error relative to the largest entry."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bnn_jax import conv, winograd

  pads = ((1, 1), (1, 1))
  assert winograd.applies((3, 3, cin, cout), (1, 1), 1, jnp.float32, (size, size))
  kx, kg = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (FLAGS.batch_size, size, size, cin), jnp.float64)
  x = jnp.where(x >= 0, 1.0, -1.0) if binary_input else x
  g = jax.random.normal(kg, (FLAGS.batch_size, size, size, cout), jnp.float64)

  def lax_grad(x, g):
    conv_w = lambda w: jax.lax.conv_general_dilated(
      x, w, (1, 1), pads, None, None, conv.DIMENSION_NUMBERS
    )
    w = jnp.zeros((3, 3, cin, cout), x.dtype)
    return jax.linear_transpose(conv_w, w)(g)[0]

  reference = np.asarray(jax.jit(lax_grad)(x, g))
  x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
  ours = np.asarray(jax.jit(lambda x, g: conv._kernel_grad_winograd(x, g, pads))(x32, g32))
  xla = np.asarray(jax.jit(lax_grad)(x32, g32))
  scale = np.abs(reference).max()
  return tuple(float(np.abs(a.astype(np.float64) - reference).max() / scale) for a in (ours, xla))


def main(argv):
  del argv
  import jax

  jax.config.update("jax_enable_x64", True)
  print(f"{machine.describe()}; batch {FLAGS.batch_size}, {FLAGS.seeds} seeds, worst printed")
  print("layer                        input   winograd   xla        ratio")
  worst = 0.0
  for net, size, cin, cout in LAYERS:
    for binary_input in (False, True):
      ours, xla = (
        max(e) for e in zip(*(errors(size, cin, cout, binary_input, s) for s in range(FLAGS.seeds)))
      )
      worst = max(worst, ours)
      name = f"{net} {cin}->{cout} at {size}x{size}"
      kind = "+-1" if binary_input else "normal"
      print(f"{name:28s} {kind:7s} {ours:.2e}   {xla:.2e}   {ours / xla:.1f}", flush=True)
  print(f"largest Winograd error: {worst:.2e} of the largest entry")


if __name__ == "__main__":
  from bnn_jax import cli  # absl's app.run, but --help exits 0 and bad flags with one sentence

  cli.run(main)
