"""Forward pass plus both gradients of one 3x3 convolution: XLA's gradient against bnn_jax.conv's
matrix-product gradient, for every conv layer shape of the quickstart net and of VGG-Small.

  python benchmarks/conv_gradients.py --batch_size=64 --repeats=5

Each layer: jit(grad(sum(cos(conv2d(x, w)))) w.r.t. x and w), with matmul_gradients forced
False, then True; the minimum of --repeats timings after one warm-up call. Prints both times,
their ratio (above 1: the matrix path is faster), the layer's multiply-adds over the batch, and
which path conv2d picks by itself (bnn_jax.conv.MATMUL_MIN_MACS). The machine and the load
average come with the figures; compare ratios, not times, across runs.
"""

import os
import sys
import time

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import machine  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 64, "Images per call.")
flags.DEFINE_integer("repeats", 5, "Timed calls per layer and path (the minimum is printed).")

# (net, spatial size, input channels, output channels): 3x3, stride 1, SAME.
LAYERS = [
  ("quickstart", 28, 1, 32),
  ("quickstart", 28, 32, 32),
  ("quickstart", 14, 32, 64),
  ("quickstart", 14, 64, 64),
  ("quickstart", 7, 64, 128),
  ("quickstart", 7, 128, 128),
  ("vgg_small", 32, 3, 128),
  ("vgg_small", 32, 128, 128),
  ("vgg_small", 16, 128, 256),
  ("vgg_small", 16, 256, 256),
  ("vgg_small", 8, 256, 512),
  ("vgg_small", 8, 512, 512),
]


def seconds(fn, *args) -> float:
  import jax

  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp

  from bnn_jax import conv

  print(f"{machine.describe()}; batch {FLAGS.batch_size}; load average {os.getloadavg()[0]:.1f}")
  print(f"{'net':<11} {'layer':<18} {'MACs':>11} {'xla ms':>8} {'matmul ms':>9} "
        f"{'xla/matmul':>10}  picked")  # fmt: skip
  for net, size, cin, cout in LAYERS:
    x = jax.random.normal(jax.random.key(0), (FLAGS.batch_size, size, size, cin))
    w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout)) * 0.1
    times = {}
    for matmul in (False, True):
      loss = lambda x, w, m=matmul: jnp.sum(jnp.cos(conv.conv2d(x, w, matmul_gradients=m)))
      times[matmul] = seconds(jax.jit(jax.grad(loss, argnums=(0, 1))), x, w)
    macs = FLAGS.batch_size * size * size * 9 * cin * cout
    picked = "matmul" if conv.use_matmul_gradients(macs) else "xla"
    print(
      f"{net:<11} {f'{cin}->{cout} at {size}x{size}':<18} {macs / 1e9:10.2f}G "
      f"{times[False] * 1e3:8.1f} {times[True] * 1e3:9.1f} {times[False] / times[True]:10.2f}  "
      f"{picked}",
      flush=True,
    )


if __name__ == "__main__":
  from bnn_jax import cli  # absl's app.run, but --help exits 0 and bad flags with one sentence

  cli.run(main)
