"""Multi-process runs: starts `jax.distributed` when this process is one of several.

One program runs on every host (or every GPU); each process feeds its own devices and JAX's
runtime joins them into one set of global devices. Launchers (launch/):
  SLURM (srun, one task per GPU), Open MPI, TPU pods on GKE: detected from the environment.
  Cloud TPU VM pod slices: --distributed=on (jax finds the workers through the TPU metadata).
  Anything else, e.g. several processes on one machine: --coordinator_address=HOST:PORT
  --num_processes=N --process_id=I on every process.
"""

import os

from bnn_jax.errors import InputError

MODES = ("auto", "on", "off")


def detected_cluster(env=None) -> str | None:
  """The multi-process launcher this process was started by, from its environment, or None."""
  env = os.environ if env is None else env

  def count(name):
    try:
      return int(env.get(name, "1"))
    except ValueError:
      return 1

  if count("SLURM_NTASKS") > 1 and "SLURM_STEP_NODELIST" in env:
    return "slurm"
  if count("OMPI_COMM_WORLD_SIZE") > 1:
    return "open mpi"
  if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu pod"
  return None


def initialize(
  mode: str = "auto",
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Calls jax.distributed.initialize if this is a multi-process run; returns whether it did.

  Must run before anything touches a JAX backend.
  """
  if mode not in MODES:
    raise InputError(f"--distributed={mode!r} is not allowed; it must be one of {MODES}")
  explicit = (coordinator_address, num_processes, process_id)
  given = any(v is not None for v in explicit)
  if mode == "off" or (mode == "auto" and not given and detected_cluster() is None):
    return False
  import jax

  if given:
    if None in explicit:
      raise InputError(
        "--coordinator_address, --num_processes and --process_id go together; give all three "
        "(or none, where the cluster is detected)"
      )
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise InputError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()
  return True


def sync_processes(name: str) -> None:
  """Waits until every process reaches the barrier `name` (a no-op with one process)."""
  import jax

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
