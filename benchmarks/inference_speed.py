"""Inference speed of VGG-Small three ways: float32 jax, the packed engine, its binary layers alone.

  python benchmarks/inference_speed.py [--workdir=DIR] [--batch_sizes=1,64] [--rounds=10]
  XLA_FLAGS=--xla_cpu_prefer_vector_width=512 python benchmarks/inference_speed.py  # AVX-512

Without --workdir it times VGG-Small on CIFAR-10's shape (32x32x3, width 1) with random weights
and BatchNorm statistics calibrated on random images: neither path has data-dependent work, so
the timings are those of a trained model. With --workdir it times that checkpoint.

Each round times every variant once, in turn, so that a machine shared with other jobs slows
them alike; the medians over the rounds and their ratios are printed with the machine's details.
"""

import argparse
import datetime
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # machine.py, also when run from elsewhere

import machine  # noqa: E402  (benchmarks/machine.py)

from bnn_jax import models  # noqa: E402
from bnn_jax.data import DataSpec, normalize  # noqa: E402
from bnn_jax.deploy import inference, lowering, summary  # noqa: E402


def simd_flags() -> str:
  """The CPU's vector extensions that matter here (/proc/cpuinfo)."""
  try:
    text = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    return "unknown"
  flags = next(
    (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
  )
  wanted = [f for f in ("avx2", "avx512f", "avx512_vpopcntdq", "avx512_vnni") if f in flags]
  return " ".join(wanted) or "no AVX2"


def random_vgg_small(image_shape=(32, 32, 3)):
  """VGG-Small (width 1) with random weights and BatchNorm statistics of random images."""
  from configs import base

  config = base.get_config()
  model = models.create_model(config, 10, image_shape, nnx.Rngs(0))
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      node.momentum = 0.0  # one train-mode pass sets the statistics to the batch's
  x = jax.random.normal(jax.random.key(1), (64, *image_shape))
  nnx.jit(lambda m, x: m(x, train=True))(model, x)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      node.momentum = 0.9
  return model, (0.0,) * image_shape[-1], (1.0,) * image_shape[-1]


def median_times(functions: dict, rounds: int) -> dict[str, float]:
  """Median seconds of each function over `rounds` rounds, the functions taking turns."""
  for f in functions.values():  # compile and warm up
    jax.block_until_ready(f())
  times = {name: [] for name in functions}
  for _ in range(rounds):
    for name, f in functions.items():
      start = time.perf_counter()
      jax.block_until_ready(f())
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def time_batch(batch, engine, float32_eval, state, image_shape, rounds) -> dict[str, float]:
  """Median seconds per call of the three variants on one batch of random uint8 images."""
  images = jnp.asarray(
    np.random.default_rng(0).integers(0, 256, (batch, *image_shape), dtype=np.uint8)
  )
  binary = inference.binary_ops(engine.program)
  first, last = binary[0], binary[-1]
  feed = {first.inputs[0]: engine.run({"input": engine.normalize(images)}, stop=first.inputs[0])}
  return median_times(
    {
      "float": lambda: float32_eval(state, images),
      "engine": lambda: engine.logits(images),
      "binary": lambda: engine.run(feed, start=first.name, stop=last.name),
    },
    rounds,
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", help="a trained VGG-Small workdir (default: random weights)")
  parser.add_argument("--batch_sizes", default="1,64")
  parser.add_argument("--rounds", type=int, default=10)
  args = parser.parse_args()

  if args.workdir:
    from bnn_jax import run

    config, spec, model = run.restore_model(args.workdir)
    image_shape, mean, std = spec.image_shape, spec.mean, spec.std
    source = f"checkpoint of {args.workdir} ({config.model.name}, width {config.model.width})"
  else:
    image_shape = (32, 32, 3)
    model, mean, std = random_vgg_small(image_shape)
    source = "VGG-Small width 1, random weights, BatchNorm calibrated on random images"
  program = lowering.lower(model, image_shape, mean, std)
  engine = inference.Engine(program)
  graphdef, state = nnx.split(model)

  @jax.jit
  def float32_eval(state, images):  # what train.make_eval_sums computes
    x = normalize(images, DataSpec(0, image_shape, mean, std))
    return nnx.merge(graphdef, state)(x, train=False)

  binary = inference.binary_ops(program)
  first, last = binary[0], binary[-1]
  s = summary.summarize(program)

  print(f"date      {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
  print(f"machine   {machine.describe()}; {simd_flags()}")
  print(f"load      average {os.getloadavg()[0]:.1f} at start")
  print(
    f"software  jax {jax.__version__}, {jax.devices()[0].platform}; XLA_FLAGS="
    f"{os.environ.get('XLA_FLAGS', '')!r}"
  )
  print(
    f"model     {source}; input {image_shape}; {s.binary_mac_share:.1%} of "
    f"{s.binary_macs + s.float_macs:,} MACs binary; file {s.deployed_bytes:,} bytes + header"
  )
  print(f"binary    ops {first.name}..{last.name} ({len(binary)} ops)")
  print(f"timing    median of {args.rounds} rounds, variants taking turns\n")
  header = f"{'batch':>5}  {'float32 jax':>14}  {'packed engine':>14}  {'binary layers':>14}"
  print(header + f"  {'engine speed-up':>15}  {'binary speed-up':>15}")
  for batch in (int(b) for b in args.batch_sizes.split(",")):
    t = time_batch(batch, engine, float32_eval, state, image_shape, args.rounds)
    unit = "{:9.2f} ms" if batch == 1 else "{:8.1f} img/s"
    shown = {k: unit.format(v * 1e3 if batch == 1 else batch / v) for k, v in t.items()}
    print(
      f"{batch:>5}  {shown['float']:>14}  {shown['engine']:>14}  {shown['binary']:>14}"
      f"  {t['float'] / t['engine']:>14.2f}x  {t['float'] / t['binary']:>14.2f}x"
    )
  print(
    f"\nload average {os.getloadavg()[0]:.1f} at the end (2 or more: other jobs shared the CPU)"
  )


if __name__ == "__main__":
  main()
