"""Orbax checkpoints of a workdir: the manager, and restoring the newest readable checkpoint.

Every process of a multi-process run calls these with the same workdir (a filesystem they all
see): orbax writes each array once and every process restores the same state. A checkpoint is
complete once its folder `checkpoints/<step>` exists (orbax renames it into place when done), so
a job killed mid-save resumes from the checkpoint before.
"""

import pathlib
import shutil
import time

import jax
import orbax.checkpoint as ocp
from absl import logging

from bnn_jax import distributed


def checkpoint_manager(workdir: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  """The orbax manager of workdir/checkpoints, keeping the newest `keep` checkpoints."""
  return ocp.CheckpointManager(
    (workdir / "checkpoints").absolute(),
    options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
  )


def restore_latest(manager, state, workdir: pathlib.Path, keep: int):
  """Restores the newest readable checkpoint into `state`'s structure and shardings.

  A checkpoint that cannot be read is reported and moved to workdir/corrupt_checkpoints (kept,
  never deleted); the one before it is tried next. Returns (state, manager).
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  while manager.latest_step() is not None:
    step = manager.latest_step()
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
      logging.info("Resumed from the checkpoint of step %d.", step)
      return restored, manager
    except Exception as e:  # orbax/tensorstore raise many types for unreadable files
      corrupt = workdir / "corrupt_checkpoints" / f"{step}-{int(time.time())}"
      logging.error(
        "The checkpoint of step %d in %s is unreadable (%s: %s); moved it to %s and trying "
        "the previous one.",
        step,
        manager.directory,
        type(e).__name__,
        str(e)[:200],
        corrupt,
      )
      print(f"warning: checkpoint of step {step} is unreadable; moved to {corrupt}", flush=True)
      if jax.process_index() == 0:
        corrupt.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(pathlib.Path(manager.directory) / str(step)), str(corrupt))
      distributed.sync_processes("bnn_jax.restore_latest")  # moved before any process looks again
      manager.close()
      manager = checkpoint_manager(workdir, keep)
  return state, manager
