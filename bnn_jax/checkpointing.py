"""Orbax checkpoints of a workdir: saving with checksums, restoring the newest verified one.

Every process of a multi-process run calls these with the same workdir (a filesystem they all
see): orbax writes each array once and every process restores the same state.

Integrity. Orbax renames a checkpoint's folder `checkpoints/<step>` into place once its write is
complete; then process 0 "seals" it: it writes `checkpoints/<step>/bnn_jax_checksums.json`, the
size and sha256 of every file in the folder. Before orbax reads a byte of a checkpoint, every
process checks the folder against that manifest, and all must agree. A checkpoint whose manifest
is missing (killed between orbax's rename and the seal, or written before bnn_jax sealed
checkpoints) or does not match (flipped bytes, a truncated copy, a deleted file) is not used:
  training (`Checkpoints`, `restore_latest`) moves it to workdir/corrupt_checkpoints (kept,
    never deleted), says so in one sentence, and resumes from the one before;
  reading a run (`restore_latest(..., read_only=True)`: export, inference, ablations) never
    moves or changes a file: it skips the checkpoint with a warning, and raises InputError when
    no checkpoint is usable.
A verified checkpoint of another model (the config changed) raises InputError: it is intact, so
it is neither moved nor used.

Failures are one sentence each: orbax's own logging of an exception that bnn_jax reports (and the
"Event loop is closed" and asyncio's "exception was never retrieved" noise of writes cut short)
is dropped, see `_quiet_orbax_failures`.
"""

import errno
import logging as std_logging
import os
import pathlib
import re
import shutil
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from bnn_jax import distributed, interrupts
from bnn_jax.checksums import damage, seal
from bnn_jax.errors import InputError


class CheckpointWriteError(InputError):
  """A checkpoint could not be written (read-only or full disk, a file in the folder's place)."""


# ----------------------------------------------------------------------------- orbax


def checkpoint_manager(workdir, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """The orbax manager of workdir/checkpoints, keeping the newest `keep` checkpoints.

  read_only: never creates, deletes or writes anything (for reading a finished run).
  """
  _quiet_orbax_failures()
  directory = (pathlib.Path(workdir) / "checkpoints").absolute()
  if read_only:
    options = ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0, max_to_keep=None
    )
  else:
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=True,
      # Directories made in the calling thread: a failure (read-only folder) raises in `save`.
      # Made asynchronously, orbax's waiters for them keep the process alive for 20 minutes.
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
    )
  return ocp.CheckpointManager(
    directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
  )


def _any_process(flag: bool) -> bool:
  """Whether `flag` is true on any process (every process must call this)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def _agreed_damage(folder: pathlib.Path) -> str | None:
  """`damage(folder)` seen by every process: damaged if any process finds it damaged."""
  problem = damage(folder)
  if _any_process(problem is not None) and problem is None:
    problem = "another process found it damaged"
  return problem


def _leaf_name(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return ".".join(parts)


def _shapes(tree) -> dict[str, tuple]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_leaf_name(path): tuple(leaf.shape) for path, leaf in flat}


def model_difference(saved, abstract) -> str | None:
  """How the saved tree of arrays (orbax metadata) differs from `abstract`'s, or None."""
  theirs, ours = _shapes(saved), _shapes(abstract)
  missing = sorted(set(ours) - set(theirs))
  extra = sorted(set(theirs) - set(ours))
  shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
  if shapes:
    k = shapes[0]
    first = f"{k} has shape {theirs[k]} there and {ours[k]} in this config's model"
  elif missing:
    first = f"{missing[0]} of this config's model is not in it"
  elif extra:
    first = f"its {extra[0]} is not in this config's model"
  else:
    return None
  more = len(shapes) + len(missing) + len(extra) - 1
  return first + (f" ({more} more differences)" if more else "")


def _check_model(manager, step: int, abstract) -> None:
  """Raises InputError if checkpoint `step` holds arrays of another tree or other shapes."""
  try:
    saved = manager.item_metadata(step)
  except Exception:  # unreadable metadata: left to the restore, which reports it
    return
  if saved is None:
    return
  problem = model_difference(saved, abstract)
  if problem:
    raise InputError(
      f"the checkpoint of step {step} in {manager.directory} holds another model: {problem}; "
      f"it was saved with another config: use that config (the workdir's config.json) or "
      f"choose a new --workdir"
    )


def restore_latest(manager, state, workdir, keep: int, read_only: bool = False):
  """Restores the newest verified checkpoint into `state`'s structure and shardings.

  Training (read_only False): a checkpoint that fails verification or cannot be read is moved to
  workdir/corrupt_checkpoints with one sentence, and the one before is tried; with none left,
  returns `state` unchanged. read_only: such a checkpoint is skipped with a warning, nothing is
  moved or written, and InputError names the workdir when none is usable.
  Returns (state, manager); the manager is a new one if checkpoints were moved.
  """
  workdir = pathlib.Path(workdir)
  directory = pathlib.Path(manager.directory)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  moved, skipped = False, []
  for step in sorted(manager.all_steps(), reverse=True):
    problem = _agreed_damage(directory / str(step))
    if problem is None:
      _check_model(manager, step, abstract)
      try:
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        failed = False
      except Exception as e:  # orbax/tensorstore raise many types for unreadable files
        failed, problem = True, f"orbax cannot read it ({_one_line(e)})"
      if _any_process(failed) and problem is None:
        problem = "another process could not read it"
      if problem is None:
        if moved:
          manager = _reopen(manager, workdir, keep)
        if read_only:  # another run's (a teacher, a stage 1, an export): nothing resumes
          logging.info("Read the checkpoint of step %d of %s.", step, workdir)
        else:
          logging.info("Resumed from the checkpoint of step %d.", step)
        return restored, manager
    if read_only:
      skipped.append(f"step {step}: {problem}")
      logging.warning("Skipped the checkpoint of step %d in %s: %s.", step, directory, problem)
      continue
    _move_aside(directory, step, workdir, problem)
    moved = True
  if read_only:
    raise InputError(
      f"workdir {workdir} has no usable checkpoint ({'; '.join(skipped) or 'none saved'})"
    )
  if moved:
    manager = _reopen(manager, workdir, keep)
  return state, manager


def _move_aside(directory: pathlib.Path, step: int, workdir: pathlib.Path, problem: str) -> None:
  corrupt = workdir / "corrupt_checkpoints" / f"{step}-{int(time.time())}"
  sentence = (
    f"the checkpoint of step {step} is unreadable: {problem}; moved it to {corrupt} and trying "
    f"the one before"
  )
  if jax.process_index() == 0:
    logging.warning("%s", sentence)
    print(f"warning: {sentence}", flush=True)
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(directory / str(step)), str(corrupt))
  distributed.sync_processes("bnn_jax.restore_latest")  # moved before any process looks again


def _reopen(manager, workdir: pathlib.Path, keep: int):
  """A fresh manager: orbax caches the list of steps, which moving checkpoints changed."""
  manager.close()
  return checkpoint_manager(workdir, keep)


# ----------------------------------------------------------------------------- training


class Checkpoints:
  """Training's checkpoints: `save` writes asynchronously; each finished save is sealed.

    checkpoints = Checkpoints(workdir, keep)
    state = checkpoints.restore_latest(state)       # the newest verified one, or `state`
    checkpoints.save(step, state)                   # returns while orbax writes
    checkpoints.wait_until_finished()               # in a `finally`: the last save is sealed
    checkpoints.close()

  A thread waits for each save and seals it as soon as orbax has renamed its folder into place,
  so a job killed later resumes from it. A save that fails (read-only or full disk) raises
  CheckpointWriteError, an InputError naming the folder and the OS error, from the next `save`
  or `wait_until_finished`.
  """

  def __init__(self, workdir, keep: int):
    self.workdir, self.keep = pathlib.Path(workdir), keep
    self.directory = (self.workdir / "checkpoints").absolute()
    try:
      self.manager = checkpoint_manager(self.workdir, keep)
    except OSError as e:
      raise CheckpointWriteError(
        f"cannot use {self.directory} as the checkpoint folder ({_os_error(e)}); remove what is "
        f"in its place or choose another --workdir"
      ) from e
    self._sealer: threading.Thread | None = None
    self._failure: tuple[int, BaseException] | None = None
    self._reported = False

  def restore_latest(self, state):
    """The newest verified checkpoint restored into `state`'s structure, or `state` itself."""
    state, self.manager = restore_latest(self.manager, state, self.workdir, self.keep)
    return state

  def save(self, step: int, state) -> None:
    """Starts writing `state` as checkpoint `step`; raises a failure of an earlier save."""
    self._finish()
    try:
      self.manager.save(step, args=ocp.args.StandardSave(state))
    except Exception as e:  # a folder that cannot be created fails here, in this thread
      raise self._write_error(step, e) from e
    self._sealer = threading.Thread(
      target=self._seal_when_written, args=(step,), name="bnn_jax_seal", daemon=True
    )
    self._sealer.start()

  def wait_until_finished(self) -> None:
    """Waits for the save in flight and seals it; raises CheckpointWriteError if it failed."""
    self._finish()

  def close(self) -> None:
    self._finish()
    self.manager.close()

  def _seal_when_written(self, step: int) -> None:
    try:
      self.manager.wait_until_finished()  # orbax raises a failed background write here
      interrupts.hold("seal", step)  # tests: a signal while a save is in progress
      if jax.process_index() == 0:
        seal(self.directory / str(step))
    except BaseException as e:  # reported by the training thread, in _finish
      self._failure = (step, e)

  def _finish(self) -> None:
    if self._sealer is not None:
      self._sealer.join()
      self._sealer = None
    if self._failure is not None and not self._reported:
      self._reported = True  # once: `wait_until_finished` in a `finally` must not raise it again
      step, e = self._failure
      raise self._write_error(step, e) from e

  def _write_error(self, step: int, e: BaseException) -> CheckpointWriteError:
    return CheckpointWriteError(
      f"cannot write the checkpoint of step {step} to {self.directory} ({_os_error(e)}); free "
      f"space or make the folder writable, then rerun to resume from the last checkpoint"
    )


# ----------------------------------------------------------------------------- messages and noise


def _one_line(e: BaseException, limit: int = 200) -> str:
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  return f"{type(e).__name__}: {text[:limit]}" if text else type(e).__name__


def _os_error(e: BaseException) -> str:
  """The OS error behind an orbax/tensorstore exception, e.g. "No space left on device (ENOSPC)"."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno:
      return f"{os.strerror(e.errno)} ({errno.errorcode.get(e.errno, e.errno)})"
    code = re.search(r"os_error_code='?(\d+)", str(e))  # tensorstore's errors carry errno so
    if code:
      number = int(code.group(1))
      return f"{os.strerror(number)} ({errno.errorcode.get(number, number)})"
    e = e.__cause__ or e.__context__
  return _one_line(e) if e is not None else "unknown error"


class _OrbaxFailureFilter(std_logging.Filter):
  """Drops orbax's logging of exceptions (bnn_jax raises them as one sentence) and its notes on
  read-only managers."""

  NOTES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")

  def filter(self, record) -> bool:
    if "/orbax/" not in record.pathname.replace(os.sep, "/"):
      return True
    if record.levelno >= std_logging.ERROR and record.exc_info:
      return False
    return not str(record.msg).startswith(self.NOTES)


class _OrbaxAsyncioFilter(std_logging.Filter):
  """Drops asyncio's "exception was never retrieved" for orbax writes that a failed save left
  behind (logged when the process ends); `Checkpoints` raises the write error itself."""

  def filter(self, record) -> bool:
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
      if "/orbax/" in tb.tb_frame.f_code.co_filename.replace(os.sep, "/"):
        return False
      tb = tb.tb_next
    return True


def _unraisable_hook(previous):
  def hook(unraisable):
    # A save cut short by a write error closes orbax's event loop while tensorstore still
    # completes the other writes; each completion then fails with this error, printed as a
    # traceback. The write error itself is raised by `Checkpoints`.
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    previous(unraisable)

  hook.bnn_jax_quiet = True
  return hook


_quiet_lock = threading.Lock()


def _quiet_orbax_failures() -> None:
  """Installs (once per process) the log filter and the unraisable-exception hook above."""
  with _quiet_lock:
    absl_logger = std_logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxFailureFilter) for f in absl_logger.filters):
      absl_logger.addFilter(_OrbaxFailureFilter())
    asyncio_logger = std_logging.getLogger("asyncio")
    if not any(isinstance(f, _OrbaxAsyncioFilter) for f in asyncio_logger.filters):
      asyncio_logger.addFilter(_OrbaxAsyncioFilter())
    if not getattr(sys.unraisablehook, "bnn_jax_quiet", False):
      sys.unraisablehook = _unraisable_hook(sys.unraisablehook)
