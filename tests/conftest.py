"""Shared test helpers: configs and paths; a session-wide JAX compilation cache; --cpu-durations;
the number of xdist workers (pyproject.toml runs the suite with -n auto).

The compilation cache: every test of a session, and every process a test starts, shares one
persistent JAX compilation cache in a temporary folder (removed at the end; tests never depend on
it being warm). The same tiny training step compiled by twenty tests is compiled once.
JAX_COMPILATION_CACHE_DIR set beforehand is used instead (kept, e.g. across sessions);
--no-jax-cache turns it off.

--cpu-durations=N lists the N tests that used the most CPU time (0: all), as --durations does
for wall time: user + system seconds of the pytest process (all its threads) and of the child
processes it waited for (subprocess.run, the notebook's kernel, launched training processes),
over setup, call and teardown. On a shared machine wall times say little; CPU times do.
"""

import fcntl
import json
import os
import pathlib
import resource
import shutil
import sys
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `from configs import ...` as in `python -m bnn_jax.main`
  sys.path.insert(0, str(ROOT))

FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def test_config():
  from configs import test

  return test.get_config()


def _once_per_session(tmp_path_factory, name: str, train) -> tuple[pathlib.Path, dict]:
  """(workdir, final evaluation) of train(workdir), run once per test session.

  Under xdist each worker has its own session fixtures; the workers of one run share the parent
  of their temporary folders, so the first worker to ask trains there under a file lock and the
  others wait and read its result (the xdist_group route broke with pytest 9.2, whose nodes no
  longer read the `_nodeid` that xdist 3.8 rewrites to group them).
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  workdir, done = root / name, root / f"{name}.json"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not done.exists():
      shutil.rmtree(workdir, ignore_errors=True)  # what a failed attempt left
      workdir.mkdir()
      result = {k: float(v) for k, v in train(workdir).items()}
      done.write_text(json.dumps(result))
  return workdir, json.loads(done.read_text())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """configs/test.py trained straight to its end (12 steps on fake 8x8 data, checkpoints of steps
  4, 8 and 12): (config, workdir, final evaluation). Shared by the tests that only read it, in
  every xdist worker: never write to it.
  """
  from bnn_jax import train
  from configs import test

  config = test.get_config()
  run = lambda workdir: train.train_and_evaluate(config, workdir)
  return (config, *_once_per_session(tmp_path_factory, "tiny_run", run))


@pytest.fixture(scope="session")
def fashion_mnist_small_run(tmp_path_factory):
  """configs/fashion_mnist.py (binary VGG-Small, width 1/4) trained for 1 epoch on the bundled
  Fashion-MNIST subset (78 steps of 128; about 60 s of CPU), evaluated on its 2,000 test images:
  (config, workdir, final evaluation). Shared by the tests that only read it, in every xdist
  worker: never write to it.
  """
  from bnn_jax import train
  from configs import fashion_mnist

  config = fashion_mnist.get_config()
  config.data.name = "fashion_mnist_small"  # real images, bundled: runs everywhere
  config.num_epochs = 1.0
  run = lambda workdir: train.train_and_evaluate(config, workdir)
  return (config, *_once_per_session(tmp_path_factory, "fashion_mnist_small_run", run))


def require_fashion_mnist():
  """Skips the calling test, saying why, when the Fashion-MNIST files are absent."""
  if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
    pytest.skip(
      f"Fashion-MNIST not found in {FASHION_MNIST}: apt-get install dataset-fashion-mnist"
    )


# ----------------------------------------------------------------------------- options


def pytest_addoption(parser):
  group = parser.getgroup("bnn_jax")
  group.addoption(
    "--cpu-durations",
    type=int,
    default=None,
    metavar="N",
    help="list the N tests that used the most CPU time, own and children's (0: all)",
  )
  group.addoption(
    "--cpu-durations-log",
    default=None,
    metavar="PATH",
    help="with --cpu-durations: also append each test's CPU times to PATH as it ends (JSON lines)",
  )
  group.addoption(
    "--no-jax-cache",
    action="store_true",
    help="no session-wide persistent JAX compilation cache (every process compiles anew)",
  )


# ----------------------------------------------------------------------------- compilation cache

# Read by JAX at import, in this process and in every process a test starts (they inherit
# os.environ): cache every compiled program, however small or quick to compile.
_CACHE_ENV = {
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
_session_cache_dir: str | None = None


def pytest_configure(config):
  global _session_cache_dir
  if config.getoption("cpu_durations") is not None and config.getoption("numprocesses", 0):
    raise pytest.UsageError(
      "--cpu-durations measures the tests of one process: add -n 0 (no xdist workers)"
    )
  if config.getoption("no_jax_cache") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  if "jax" in sys.modules:  # too late for the environment: a plugin imported JAX first
    return
  _session_cache_dir = tempfile.mkdtemp(prefix="bnn_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _session_cache_dir
  for name, value in _CACHE_ENV.items():
    os.environ.setdefault(name, value)


def pytest_xdist_auto_num_workers(config):
  """-n auto: one worker per core, at most 8 (each worker holds JAX and its compiled programs)."""
  return min(os.cpu_count() or 1, 8)


def pytest_unconfigure(config):
  if _session_cache_dir is not None:
    shutil.rmtree(_session_cache_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- --cpu-durations


def _cpu_seconds() -> tuple[float, float]:
  """(user + system seconds of this process, of its waited-for children) so far."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


_cpu_records: list[tuple[str, float, float, float]] = []  # nodeid, own s, children s, wall s
_session_start: tuple[float, float, float] | None = None


def pytest_sessionstart(session):
  global _session_start
  _session_start = (*_cpu_seconds(), time.perf_counter())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  if item.config.getoption("cpu_durations") is None:
    yield
    return
  own, children = _cpu_seconds()
  start = time.perf_counter()
  yield
  own_after, children_after = _cpu_seconds()
  record = (item.nodeid, own_after - own, children_after - children, time.perf_counter() - start)
  _cpu_records.append(record)
  log = item.config.getoption("cpu_durations_log")
  if log:  # written as each test ends: a session that is killed keeps what it measured
    with open(log, "a") as f:
      f.write(json.dumps(dict(zip(("test", "own_s", "children_s", "wall_s"), record))) + "\n")


def pytest_terminal_summary(terminalreporter, config):
  count = config.getoption("cpu_durations")
  if count is None:
    return
  write = terminalreporter.write_line
  rows = sorted(_cpu_records, key=lambda r: -(r[1] + r[2]))
  terminalreporter.write_sep("=", f"{'all' if count == 0 else count} largest CPU times")
  write(f"{'cpu s':>8} {'own':>8} {'children':>8} {'wall s':>8}  test")
  for nodeid, own, children, wall in rows if count == 0 else rows[:count]:
    write(f"{own + children:8.1f} {own:8.1f} {children:8.1f} {wall:8.1f}  {nodeid}")
  tests_cpu = sum(r[1] + r[2] for r in rows)
  own, children = _cpu_seconds()
  session_cpu = own + children - sum(_session_start[:2])
  wall = time.perf_counter() - _session_start[2]
  write(
    f"tests: {tests_cpu:.1f} CPU s in {len(rows)} tests; session (collection included): "
    f"{session_cpu:.1f} CPU s, {wall:.1f} s wall; load average {os.getloadavg()[0]:.1f}; "
    f"compilation cache: {os.environ.get('JAX_COMPILATION_CACHE_DIR', 'off')}"
  )
