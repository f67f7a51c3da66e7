"""Ctrl-C and SIGTERM: training stops at a step boundary, saves, prints one line, exits 130/143.

`install()` (bnn_jax.main, before anything starts a thread) blocks SIGINT and SIGTERM in every
thread and starts one thread that waits for them (sigwait). A signal therefore never interrupts
Python or XLA code: no KeyboardInterrupt is raised into a compilation, and the interpreter is
never torn down under live XLA threads (both crashed with a segmentation fault).

What a signal does depends on where the run is:
  before a step of this run has finished (start-up, data, restore, the first compilation):
    nothing is lost by leaving, so the watcher thread prints the line and leaves at once
    (os._exit: no teardown), waiting only for a `critical()` file write to end;
  after that: it sets a flag that the training loop reads after every jitted call
    (`requested`): the loop writes the pending metrics, saves a checkpoint of the step it
    reached unless that one is already saved, waits for every save to be written and sealed,
    and raises `Stopped`; main prints its line and leaves. An evaluation of host-fed data
    stops between batches (`check_evaluation`); the resumed run evaluates that step again.
  a second signal: leaves at once, whatever runs. A checkpoint being written is then
    incomplete; the next run sets it aside (checkpoints are sealed with checksums,
    bnn_jax.checkpointing) and resumes from the last complete one.
Several processes (bnn_jax.distributed) agree on the step to stop at (`agreed`, a collective at
the steps where the loop logs, evaluates or saves), so every process saves the same step.

Test hook: BNN_JAX_TEST_HOLD=step:N holds the loop after step N, =seal:N the sealing of checkpoint
N (a save in progress), each until the next signal; several, comma-separated. Tests signal at
a known moment without sleeping (tests/test_signals.py).
"""

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
HOLD_ENV = "BNN_JAX_TEST_HOLD"


class Stopped(BaseException):  # noqa: N818 (not an error: the run's outcome)
  """Raised by the training loop once it stopped for a signal and saved; `message` is the line."""

  def __init__(self, message: str):
    super().__init__(message)
    self.message = message


class EvaluationAbandoned(Exception):  # noqa: N818
  """An evaluation left between batches because a stop was requested."""


# The main thread's critical sections (file writes a leaving process must not cut) and the
# watcher's decisions are serialized by this lock.
_lock = threading.RLock()
_requested = threading.Event()
_signalled = threading.Condition(_lock)  # for `hold`
_installed = False
_signals: list[int] = []
# Where a signal leaves at once: returns the line to print (None: the loop handles the signal).
_leave_now: Callable[[], str] | None = None


def install(leave_now: Callable[[], str]) -> None:
  """Handles SIGINT and SIGTERM for the rest of the process; before a step has finished, a
  signal leaves at once printing leave_now(). Call before any thread starts (the mask is
  inherited by threads created later, XLA's included)."""
  global _installed, _leave_now
  _leave_now = leave_now
  if _installed:
    return
  _installed = True
  # A signal that still reaches Python (a thread started before this call) is handled alike.
  for s in SIGNALS:
    signal.signal(s, lambda signum, frame: _received(signum))
  signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
  threading.Thread(target=_watch, name="bnn_jax_signals", daemon=True).start()


def installed() -> bool:
  return _installed


def _watch() -> None:
  while True:
    _received(signal.sigwait(SIGNALS))


def _received(signum: int) -> None:
  with _lock:  # waits for a critical section of the main thread to end
    _signals.append(signum)
    if len(_signals) > 1:
      leave(
        f"Stopped at once by a second {NAMES[signum]}; {_last_checkpoint_words()}", signum=signum
      )
    if _leave_now is not None:
      leave(_leave_now(), signum=signum)
    _requested.set()
    _signalled.notify_all()


def requested() -> bool:
  """Whether a signal asked this process to stop (it then stops at the next step boundary)."""
  return _requested.is_set()


def agreed(at_sync_point: bool) -> bool:
  """Whether the run stops now: this process's request, or with several processes, any
  process's, exchanged at sync points only (steps where every process checks: a collective
  elsewhere would wait for processes that train on)."""
  if _single_process():
    return requested()
  return at_sync_point and any_process(requested())


def any_process(flag: bool) -> bool:
  """Whether `flag` is true on any process (with several, every process must call this)."""
  if _single_process():
    return flag
  import numpy as np
  from jax.experimental import multihost_utils

  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def check_evaluation() -> None:
  """Raises EvaluationAbandoned when a stop is requested (one process: the others would wait
  for it in the evaluation's collectives)."""
  if requested() and _single_process():
    raise EvaluationAbandoned


def _single_process() -> bool:
  import jax

  return jax.process_count() == 1


def training_started() -> None:
  """From now on a signal stops the loop at its next step boundary instead of leaving at once."""
  global _leave_now
  if _leave_now is not None:
    with _lock:
      _leave_now = None


def leave_now_with(words: Callable[[], str]) -> None:
  """Until training_started: a signal leaves at once printing words()."""
  global _leave_now
  with _lock:
    _leave_now = words


@contextlib.contextmanager
def critical():
  """A block (a file rewrite) that a signal must not cut: leaving waits for its end."""
  with _lock:
    yield


def signal_name() -> str:
  return NAMES.get(_signals[0], "a signal") if _signals else "a signal"


def exit_status(signum: int | None = None) -> int:
  """128 + the signal's number, as a shell reports a process ended by that signal."""
  signum = signum if signum is not None else (_signals[0] if _signals else signal.SIGINT)
  return 128 + signum


def leave(message: str, signum: int | None = None) -> None:
  """Prints `message` as one line on stderr and ends the process now (os._exit), status 130 for
  SIGINT and 143 for SIGTERM. Python's teardown is skipped: it would race XLA's threads."""
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(Exception):
      stream.flush()
  os.write(2, (" ".join(message.split()) + "\n").encode())
  os._exit(exit_status(signum))


# ----------------------------------------------------------------------------- words


def starting_words() -> str:
  """The line of a program stopped before it knows its workdir."""
  return (
    f"Stopped while starting ({signal_name()}); nothing to save; the same command starts again."
  )


def before_training_words(workdir) -> Callable[[], str]:
  """The line of a run stopped before its first step: what the workdir holds decides it."""

  def words():
    step = sealed_checkpoint(workdir)
    if step is None:
      return (
        f"Stopped before the first step ({signal_name()}); nothing to save; the same command "
        "starts again."
      )
    return (
      f"Stopped before the first step of this run ({signal_name()}); the checkpoint of step {step} "
      f"is kept; the same command resumes from step {step}."
    )

  return words


def stopped_words(done: int, stop: int, saved_now: bool) -> str:
  saved = "saved a checkpoint" if saved_now else "its checkpoint was already saved"
  return (
    f"Stopped at step {done} of {stop} ({signal_name()}); {saved}; the same command resumes "
    f"from step {done}."
  )


_workdir = None


def watch_workdir(workdir) -> None:
  """The workdir whose checkpoints the line of a second signal names."""
  global _workdir
  _workdir = workdir


def _last_checkpoint_words() -> str:
  step = sealed_checkpoint(_workdir) if _workdir is not None else None
  if step is None:
    return "no complete checkpoint yet; the same command starts again."
  return f"the same command resumes from the last complete checkpoint (step {step})."


def sealed_checkpoint(workdir) -> int | None:
  """The newest step in workdir/checkpoints whose checksum manifest is written, or None."""
  from bnn_jax.checksums import MANIFEST

  folder = os.path.join(os.fspath(workdir), "checkpoints")
  try:
    names = os.listdir(folder)
  except OSError:
    return None
  steps = [
    int(n) for n in names if n.isdigit() and os.path.exists(os.path.join(folder, n, MANIFEST))
  ]
  return max(steps, default=None)


# ----------------------------------------------------------------------------- test hook


def hold(kind: str, step: int) -> None:
  """Tests only: where BNN_JAX_TEST_HOLD (comma-separated) holds `kind:step`, says so on stderr
  and waits for the next signal."""
  if f"{kind}:{step}" not in os.environ.get(HOLD_ENV, "").split(","):
    return
  with _signalled:
    seen = len(_signals)
    print(f"{HOLD_ENV}: holding at {kind} {step} until a signal", file=sys.stderr, flush=True)
    _signalled.wait_for(lambda: len(_signals) > seen)
