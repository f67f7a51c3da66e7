"""launch/local_processes.py stops its processes: when one fails, and when it is interrupted.

The children here stand in for JAX processes: they ignore SIGTERM (as JAX does, taking it for a
preemption notice) and would run for 10 minutes; one of them also starts a grandchild.
"""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from launch import local_processes

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Ignores SIGTERM, starts a grandchild (`sleep`), writes "<own pid> <grandchild pid>" to argv[1],
# then sleeps for 10 minutes.
STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen(["sleep", "600"])
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(f"{__import__('os').getpid()} {grandchild.pid}")
    __import__("os").replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
""")
# Exits with status 3 once the file argv[1] exists (the other process reported its pids).
FAILS_AFTER = textwrap.dedent("""
    import os, sys, time
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.05)
    sys.exit(3)
""")
HANG_S = 600  # only against a hang: every wait here is for a condition


# Each test starts and kills several processes and waits out a SIGTERM grace period.
pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
  """Whether process `pid` runs (a zombie, ended but not yet reaped, does not)."""
  try:
    state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
  except (FileNotFoundError, IndexError):
    return False
  return state not in ("Z", "X")


def all_gone(pids: list[int]) -> bool:
  """Whether every process of `pids` is gone (within HANG_S). A SIGKILLed process group dies
  asynchronously: under load a grandchild can still be exiting when the launcher returns."""
  hang = time.monotonic() + HANG_S
  while any(alive(pid) for pid in pids):
    if time.monotonic() > hang:
      return False
    time.sleep(0.05)
  return True


def pids_from(path: pathlib.Path) -> list[int]:
  hang = time.monotonic() + HANG_S
  while not path.exists():
    assert time.monotonic() < hang, f"{path} was never written"
    time.sleep(0.05)
  return [int(x) for x in path.read_text().split()]


def catches_sigterm(pid: int) -> bool:
  """Whether process `pid` has a handler installed for SIGTERM (SigCgt of /proc/PID/status)."""
  for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
    if line.startswith("SigCgt:"):
      return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
  return False


def stubborn(tmp_path: pathlib.Path, name: str) -> tuple[list[str], pathlib.Path]:
  """A command that runs for 10 minutes, and the file it reports its pids in."""
  return [sys.executable, "-c", STUBBORN, str(tmp_path / name)], tmp_path / name


def test_a_failing_process_stops_the_others_with_its_status(tmp_path):
  command, pid_file = stubborn(tmp_path, "pids")
  processes = local_processes.spawn(
    [[sys.executable, "-c", FAILS_AFTER, str(pid_file)], command],
    tmp_path / "logs",
    all_to_logs=True,
  )
  pids = pids_from(pid_file)
  assert local_processes.wait(processes) == 3
  # Stopped (SIGTERM ignored, then SIGKILL), not waited for: it would sleep 600 s and exit 0.
  assert processes[1].returncode == -signal.SIGKILL
  assert all_gone(pids)  # the grandchild too: its whole process group


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_launcher_stops_its_processes(tmp_path, sig, status):
  (a, pids_a), (b, pids_b) = stubborn(tmp_path, "pids_a"), stubborn(tmp_path, "pids_b")
  launcher = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import pathlib, sys; from launch import local_processes as lp; "
      f"sys.exit(lp.supervise(lp.spawn([{a!r}, {b!r}], pathlib.Path({str(tmp_path)!r}), "
      "all_to_logs=True)))",
    ],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
  )
  pids = pids_from(pids_a) + pids_from(pids_b)
  # The launcher is in `supervise` once its SIGTERM handler is installed (SIGINT's is Python's
  # own, from the start): a signal before that would test nothing of it.
  hang = time.monotonic() + HANG_S
  while not catches_sigterm(launcher.pid):
    assert launcher.poll() is None and time.monotonic() < hang, "the launcher never supervised"
    time.sleep(0.05)
  launcher.send_signal(sig)
  assert launcher.wait(timeout=HANG_S) == status
  assert all_gone(pids)


def test_all_succeeding_processes_give_status_0(tmp_path):
  ok = [sys.executable, "-c", "pass"]
  assert local_processes.wait(local_processes.spawn([ok, ok], tmp_path, all_to_logs=True)) == 0
