"""Several JAX processes on one CPU machine, joined by jax.distributed: multi-host code, tested.

python launch/local_processes.py --num_processes=2 --devices_per_process=2 -- \
  --config=configs/resnet18_imagenet.py --workdir=/tmp/multi --config.data.name=imagenet_synthetic

Starts `python -m bnn_jax.main ARGS --coordinator_address=127.0.0.1:PORT --num_processes=N
--process_id=I` for every I, each with its own fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count) and gloo collectives between processes.
Process 0 writes to this terminal, the others to LOG_DIR/process_I.log. When one process fails,
the others are stopped (SIGTERM, then SIGKILL 5 s later: JAX catches SIGTERM); the exit status is
the first failure's. Ctrl-C or SIGTERM to the launcher stops them all the same way. The same
command, run again, resumes from the workdir's checkpoint, as a real multi-host job would.
"""

import argparse
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
GRACE_SECONDS = 5.0  # from SIGTERM to SIGKILL when stopping the processes


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(
  num_processes: int,
  devices_per_process: int,
  main_args: list[str],
  log_dir: pathlib.Path,
  port: int | None = None,
  all_to_logs: bool = False,
) -> list[subprocess.Popen]:
  """Starts the processes (not waiting); process I logs to log_dir/process_I.log.

  Process 0 writes to this process's stdout and stderr unless all_to_logs.
  """
  port = port or free_port()
  env = dict(os.environ)
  env.update(
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
    JAX_PLATFORMS="cpu",
    JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
  )
  commands = [
    [
      sys.executable,
      "-m",
      "bnn_jax.main",
      *main_args,
      f"--coordinator_address=127.0.0.1:{port}",
      f"--num_processes={num_processes}",
      f"--process_id={index}",
    ]
    for index in range(num_processes)
  ]
  return spawn(commands, log_dir, env, all_to_logs)


def spawn(
  commands: list[list[str]], log_dir: pathlib.Path, env=None, all_to_logs: bool = False
) -> list[subprocess.Popen]:
  """Starts each command in a process group of its own (`stop` signals the whole group).

  Command I logs to log_dir/process_I.log; command 0 writes to this process's stdout and
  stderr unless all_to_logs.
  """
  log_dir.mkdir(parents=True, exist_ok=True)
  processes = []
  for index, command in enumerate(commands):
    if index == 0 and not all_to_logs:
      out = None
    else:
      out = open(log_dir / f"process_{index}.log", "w")  # noqa: SIM115 (closed with the child)
    processes.append(
      subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        start_new_session=True,  # its own process group: stop() reaches what it started too
      )
    )
    if out is not None:
      out.close()  # the child holds its own descriptor
  return processes


def _signal_group(process: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(process.pid, sig)  # the group outlives its leader while members remain
  except (ProcessLookupError, PermissionError):
    pass


def stop(processes: list[subprocess.Popen], grace: float = GRACE_SECONDS) -> None:
  """Stops every process group: SIGTERM, then SIGKILL to what runs `grace` seconds later.

  JAX catches SIGTERM (a preemption notice), so a process blocked in a collective whose peer
  died would otherwise run until jax's heartbeat timeout (100 s) ends it.
  """
  for p in processes:
    _signal_group(p, signal.SIGTERM)
  deadline = time.monotonic() + grace
  for p in processes:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      pass
  for p in processes:
    _signal_group(p, signal.SIGKILL)
  for p in processes:
    p.wait()


def wait(processes: list[subprocess.Popen], timeout: float | None = None) -> int:
  """Waits for all; stops the others when one fails, and all after `timeout` seconds.

  Returns the first nonzero exit status, 124 on timeout, or 0.
  """
  deadline = None if timeout is None else time.monotonic() + timeout
  while True:
    codes = [p.poll() for p in processes]
    failed = [c for c in codes if c not in (None, 0)]
    if failed:
      stop(processes)
      return failed[0]
    if all(c == 0 for c in codes):
      return 0
    if deadline is not None and time.monotonic() > deadline:
      stop(processes)
      return 124
    time.sleep(0.1)


class _Terminated(Exception):
  """This launcher received SIGTERM."""


def _raise_terminated(signum, frame):
  raise _Terminated


def supervise(processes: list[subprocess.Popen], timeout: float | None = None) -> int:
  """`wait`, and on Ctrl-C (SIGINT) or SIGTERM to this launcher, stop the processes.

  Returns what `wait` returns, or 130 (SIGINT) / 143 (SIGTERM) when interrupted. The children
  are in process groups of their own, so a terminal's Ctrl-C reaches only this launcher.
  """
  previous = signal.getsignal(signal.SIGTERM)
  try:  # installed inside the try: a signal right after it is still handled below
    signal.signal(signal.SIGTERM, _raise_terminated)
    return wait(processes, timeout)
  except KeyboardInterrupt:
    stop(processes)
    return 128 + signal.SIGINT
  except _Terminated:
    stop(processes)
    return 128 + signal.SIGTERM
  finally:
    signal.signal(signal.SIGTERM, previous)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=2)
  parser.add_argument("--port", type=int, default=0, help="coordinator port; 0 = a free one")
  parser.add_argument("--log_dir", default="/tmp/bnn_jax_processes")
  parser.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then bnn_jax.main flags")
  args = parser.parse_args()
  main_args = args.main_args[1:] if args.main_args[:1] == ["--"] else args.main_args
  processes = start(
    args.num_processes, args.devices_per_process, main_args, pathlib.Path(args.log_dir), args.port
  )
  return supervise(processes)


if __name__ == "__main__":
  sys.exit(main())
