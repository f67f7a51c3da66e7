"""What a benchmark ran on: CPU model, cores, and the JAX devices; printed with every figure."""

import os
import platform


def cpu() -> str:
  """ "x86_64 <CPU model name>, N cores" from /proc/cpuinfo where it exists."""
  name = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{platform.machine()} {name}, {os.cpu_count()} cores"


def describe() -> str:
  """The CPU plus jax's version and devices."""
  import jax

  devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
  return f"{cpu()}; jax {jax.__version__} on {jax.device_count()} x {devices}"
