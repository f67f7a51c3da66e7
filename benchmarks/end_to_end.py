"""Trainer end to end against the bare train step, and several runs at once on one device.

  python benchmarks/end_to_end.py --config=configs/vgg_small.py --batch_size=128 \
    [--steps_per_call=1,10] [--runs_at_once=1,2,4] [--variants=binary,float]

Prints, in one run, for each variant:
  step       train_speed.py's figure: the jitted, donated update on one fixed batch on the device
  trainer    bnn_jax.train.train_and_evaluate on fake in-memory data of the config's image shape
             (batch selection, augmentation, metrics, logging: everything a run does), eval and
             checkpoints only after the last timed step; images/s is the median of the
             trainer's own log windows (train/images_per_sec in metrics.jsonl; they leave out
             the first call, which compiles); once per --steps_per_call value
and, for the first variant and its fastest steps_per_call, the images/s of N trainer runs at
once on this one device (the sum of their medians), for N in --runs_at_once.

Several runs at once are N processes, each with its own share of the accelerator's memory
(XLA_PYTHON_CLIENT_MEM_FRACTION = 0.8 / N; this process does not preallocate), as
launch/multi_run.py runs them. Processes are the simpler design that really shares one GPU: any
config runs unchanged, and one that fails stops alone (vmapping the trainer over seeds would need
a second training loop). The GPU time-slices between the processes' kernels (no MPS), so N runs
gain when one run leaves the GPU idle (host work, small kernels), not otherwise.

Both halves of a ratio come from this one run: compare ratios, and read absolute figures with
the machine line and the load average printed at the start and the end.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

# This process keeps only what it uses, so that the runs-at-once processes get their shares.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from absl import flags  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
import machine  # noqa: E402
import train_speed  # noqa: E402  (defines --config, --batch_size, --steps, --repeats, --variants)

FLAGS = flags.FLAGS
flags.DEFINE_list("steps_per_call", ["1", "10"], "Trainer steps per jitted call to measure.")
flags.DEFINE_list("runs_at_once", ["1", "2", "4"], "Numbers of concurrent runs to measure.")
flags.DEFINE_integer("window_steps", 100, "Trainer log window (log_every_steps), in steps.")
flags.DEFINE_integer("windows", 6, "Trainer log windows per run.")
flags.DEFINE_integer("train_size", 50_000, "Fake training images held on the device.")
flags.DEFINE_bool("worker", False, "Internal: run one trainer and print its figure as JSON.")

MEMORY_SHARE = 0.8  # of the accelerator, split between the runs at once


def image_shape(config) -> tuple[int, int, int]:
  """The config's image shape: its dataset's where the registry knows it, else the fake one."""
  from bnn_jax.data import DATASETS

  info = DATASETS.get(config.data.name)
  return (
    tuple(info.image_shape) if info and info.image_shape else tuple(config.data.fake_image_shape)
  )


def num_classes(config) -> int:
  from bnn_jax.data import DATASETS

  info = DATASETS.get(config.data.name)
  return info.num_classes if info and info.num_classes else config.data.fake_num_classes


def trainer_config(config, variant: str, steps_per_call: int):
  """The config as a timed run: fake data of its shape, eval and checkpoints after the end."""
  config = config.copy_and_resolve_references()
  config.model.binary = variant == "binary"
  shape, classes = image_shape(config), num_classes(config)
  config.data.update(
    name="fake",
    fake_image_shape=shape,
    fake_num_classes=classes,
    fake_train_size=FLAGS.train_size,
    fake_test_size=config.eval_batch_size,
  )
  config.batch_size = FLAGS.batch_size
  config.steps_per_call = steps_per_call
  config.log_every_steps = FLAGS.window_steps
  config.max_steps = FLAGS.windows * FLAGS.window_steps
  config.num_epochs = 1000.0  # the schedule spans far more than the timed steps
  config.eval_every_epochs = 1000.0  # evaluation and the checkpoint only at max_steps
  config.checkpoint_every_steps = 10**9
  return config


def trainer_rate(config, variant: str, steps_per_call: int) -> float:
  """Median images/s of a trainer run's log windows (the trainer times its first call apart)."""
  import pathlib

  from bnn_jax import run, train

  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(trainer_config(config, variant, steps_per_call), workdir)
    rates = [
      r["train/images_per_sec"]
      for r in run.MetricsLog(pathlib.Path(workdir)).read()
      if "train/images_per_sec" in r
    ]
  if not rates:
    raise SystemExit("error: no timed window; give --windows and --window_steps room")
  return statistics.median(rates)


def worker_command(variant: str, steps_per_call: int) -> list[str]:
  """This script as one trainer run, with the flags it was given (config overrides included)."""
  ours = ("--steps_per_call", "--runs_at_once", "--variants", "--worker")
  kept = [a for a in sys.argv[1:] if not a.startswith(ours)]
  return [
    sys.executable,
    os.path.abspath(__file__),
    *kept,
    "--worker",
    f"--variants={variant}",
    f"--steps_per_call={steps_per_call}",
  ]


def runs_at_once(count: int, variant: str, steps_per_call: int) -> list[float]:
  """images/s of each of `count` trainer runs started together, each in its own process."""
  env = dict(os.environ)
  env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
  env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{MEMORY_SHARE / count:.3f}"
  with tempfile.TemporaryDirectory() as logs:
    processes = []
    for i in range(count):  # their logs go to files: a full pipe would stop a run
      log = open(os.path.join(logs, f"{i}.log"), "w+")
      command = worker_command(variant, steps_per_call)
      processes.append((subprocess.Popen(command, env=env, stdout=log, stderr=log), log))
    rates = []
    for p, log in processes:
      p.wait()
      log.seek(0)
      lines = log.read().strip().splitlines()
      log.close()
      if p.returncode != 0:
        tail = "\n".join(lines[-20:])
        raise SystemExit(f"error: a run at once failed (exit {p.returncode}):\n{tail}")
      result = next(x for x in reversed(lines) if x.startswith('{"images_per_sec"'))
      rates.append(json.loads(result)["images_per_sec"])
  return rates


def load() -> str:
  return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv):
  del argv
  config = FLAGS.config
  ks = sorted({int(k) for k in FLAGS.steps_per_call})
  if FLAGS.worker:
    rate = trainer_rate(config, FLAGS.variants[0], ks[-1])
    print(json.dumps({"images_per_sec": rate}))
    return
  print(f"machine: {machine.describe()}")
  print(load())
  shape = "x".join(map(str, image_shape(config)))
  print(
    f"model {config.model.name} width {config.model.width}, batch {FLAGS.batch_size}, images "
    f"{shape}, compute {config.compute_dtype}; step: {FLAGS.steps} steps x {FLAGS.repeats} "
    f"timings; trainer: fake data ({FLAGS.train_size} train images), {FLAGS.windows} windows "
    f"of {FLAGS.window_steps} steps, median",
    flush=True,
  )
  fastest = {}  # variant -> the steps_per_call of its best trainer figure
  for variant in FLAGS.variants:
    step = train_speed.measure(config, variant)
    print(f"{variant:>6} step benchmark      {step:10.1f} images/s", flush=True)
    rates = {}
    for k in ks:
      rates[k] = trainer_rate(config, variant, k)
      print(
        f"{variant:>6} trainer steps_per_call={k:<3} {rates[k]:10.1f} images/s "
        f"({rates[k] / step:.3f} of the step benchmark)",
        flush=True,
      )
    fastest[variant] = max(rates, key=rates.get)
  variant = FLAGS.variants[0]
  k = fastest[variant]
  print(
    f"runs at once ({variant}, steps_per_call={k}; N processes, "
    f"XLA_PYTHON_CLIENT_MEM_FRACTION={MEMORY_SHARE}/N each):",
    flush=True,
  )
  for count in sorted({int(n) for n in FLAGS.runs_at_once}):
    rates = runs_at_once(count, variant, k)
    each = ", ".join(f"{r:.1f}" for r in rates)
    print(f"  N={count}: {sum(rates):10.1f} images/s in all (each: {each})", flush=True)
  print(load())


if __name__ == "__main__":
  from bnn_jax import cli  # absl's app.run, but --help exits 0 and bad flags with one sentence

  cli.run(main)
