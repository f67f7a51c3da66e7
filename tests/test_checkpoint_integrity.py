"""Checkpoint integrity: sealed saves, verified restores, read-only reading, failed writes.

Small pytrees stand in for the train state where the model does not matter (seconds); the tiny
training config of configs/test.py is used where the train loop, export or main are the subject.
"""

import hashlib
import logging
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bnn_jax import checkpointing, checksums
from bnn_jax.errors import InputError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def small_state(seed: int, n: int = 4000) -> dict:
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {
    "step": jnp.int32(seed),
    "w": jax.random.normal(k1, (n,)),
    "opt": {"mu": jax.random.normal(k2, (64, 48))},
  }


def save_steps(workdir: pathlib.Path, steps=(1, 2)) -> dict[int, dict]:
  checkpoints = checkpointing.Checkpoints(workdir, keep=3)
  states = {}
  for step in steps:
    states[step] = small_state(step)
    checkpoints.save(step, states[step])
  checkpoints.close()
  return states


def restore(workdir: pathlib.Path, template=None, read_only=False):
  manager = checkpointing.checkpoint_manager(workdir, 3, read_only=read_only)
  template = small_state(0) if template is None else template
  state, manager = checkpointing.restore_latest(manager, template, workdir, 3, read_only=read_only)
  manager.close()
  return state


def assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def snapshot(folder: pathlib.Path) -> dict[str, str]:
  """Every file and folder under `folder` with the sha256 of its bytes."""
  return {
    p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
    if p.is_file()
    else "folder"
    for p in sorted(folder.rglob("*"))
  }


def data_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """A checkpoint's array data files, largest first."""
  files = list(folder.glob("default/ocdbt.process_0/d/*"))
  assert files, sorted(folder.rglob("*"))
  return sorted(files, key=lambda p: -p.stat().st_size)


def flip(path: pathlib.Path, at: float, count: int = 1) -> None:
  """Inverts `count` bytes of the file starting at fraction `at` of its length."""
  data = bytearray(path.read_bytes())
  start = min(int(at * len(data)), len(data) - count)
  for i in range(start, start + count):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- sealing


def test_every_finished_save_is_sealed_and_verifies(tmp_path):
  save_steps(tmp_path, steps=(1, 2, 3))
  for step in (1, 2, 3):
    folder = tmp_path / "checkpoints" / str(step)
    manifest = (folder / checksums.MANIFEST).read_text()
    assert "default/_METADATA" in manifest and "_CHECKPOINT_METADATA" in manifest
    assert checksums.damage(folder) is None
  assert_same(restore(tmp_path), small_state(3))


def test_a_save_is_sealed_without_waiting_for_the_next_one(tmp_path):
  checkpoints = checkpointing.Checkpoints(tmp_path, keep=3)
  checkpoints.save(1, small_state(1))
  manifest = tmp_path / "checkpoints" / "1" / checksums.MANIFEST
  # The background sealer writes it once orbax is done, with no further call; 600 s only
  # against a sealer that never does.
  hang = time.monotonic() + 600
  while not manifest.exists() and time.monotonic() < hang:
    time.sleep(0.05)
  assert manifest.exists()
  checkpoints.close()


# ----------------------------------------------------------------------------- damage in training


@pytest.mark.parametrize("at,count", [(0.0, 1), (0.3, 1), (0.5, 64), (0.8, 8), (1.0, 1)])
def test_flipped_data_bytes_are_detected_and_the_previous_checkpoint_is_used(
  tmp_path, capsys, at, count
):
  states = save_steps(tmp_path)
  flip(data_files(tmp_path / "checkpoints" / "2")[0], at, count)
  assert_same(restore(tmp_path), states[1])
  out = capsys.readouterr().out
  assert "the checkpoint of step 2 is unreadable: its file default/ocdbt.process_0/d/" in out
  assert "does not match its sha256" in out
  moved = list((tmp_path / "corrupt_checkpoints").iterdir())
  assert len(moved) == 1 and moved[0].name.startswith("2-")  # kept for inspection
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_a_checkpoint_without_manifest_is_treated_as_incomplete(tmp_path, capsys):
  states = save_steps(tmp_path)
  (tmp_path / "checkpoints" / "2" / checksums.MANIFEST).unlink()  # killed before the seal
  assert_same(restore(tmp_path), states[1])
  assert f"has no {checksums.MANIFEST}: its save did not finish" in capsys.readouterr().out
  assert [p.name[:2] for p in (tmp_path / "corrupt_checkpoints").iterdir()] == ["2-"]


@pytest.mark.parametrize(
  "deleted",
  ["_CHECKPOINT_METADATA", "default/manifest.ocdbt", "default/ocdbt.process_0/manifest.ocdbt"],
)
def test_deleted_orbax_files_are_one_sentence_not_tracebacks(tmp_path, capfd, deleted):
  states = save_steps(tmp_path)
  (tmp_path / "checkpoints" / "2" / deleted).unlink()
  assert_same(restore(tmp_path), states[1])
  out, err = capfd.readouterr()
  assert f"the checkpoint of step 2 is unreadable: its file {deleted} is missing" in out
  assert "Traceback" not in out + err and "Event loop is closed" not in out + err


def test_a_checkpoint_of_another_model_is_refused_and_left_in_place(tmp_path, capfd):
  save_steps(tmp_path)
  before = snapshot(tmp_path)
  for read_only in (False, True):
    with pytest.raises(
      InputError,
      match=r"step 2 in .* holds another model: w has shape \(4000,\) there and \(4001,\) in "
      r"this config's model; it was saved with another config",
    ):
      restore(tmp_path, small_state(0, n=4001), read_only=read_only)
  assert snapshot(tmp_path) == before
  assert "Traceback" not in "".join(capfd.readouterr())


# ----------------------------------------------------------------------------- reading a run


def test_reading_a_run_skips_a_damaged_checkpoint_and_changes_nothing(tmp_path, caplog):
  states = save_steps(tmp_path)
  flip(data_files(tmp_path / "checkpoints" / "2")[0], 0.5)
  before = snapshot(tmp_path)
  assert_same(restore(tmp_path, read_only=True), states[1])
  assert "Skipped the checkpoint of step 2" in caplog.text
  assert snapshot(tmp_path) == before
  assert not (tmp_path / "corrupt_checkpoints").exists()


def test_reading_a_run_without_a_usable_checkpoint_raises_and_changes_nothing(tmp_path):
  save_steps(tmp_path)
  flip(data_files(tmp_path / "checkpoints" / "2")[0], 0.5)
  (tmp_path / "checkpoints" / "1" / checksums.MANIFEST).unlink()
  before = snapshot(tmp_path)
  with pytest.raises(InputError, match=f"workdir {tmp_path} has no usable checkpoint .step 2: "):
    restore(tmp_path, read_only=True)
  assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- failed writes


def test_a_file_in_the_place_of_the_checkpoint_folder_fails_the_save(tmp_path):
  (tmp_path / "checkpoints").write_text("not a folder")
  checkpoints = checkpointing.Checkpoints(tmp_path, keep=3)
  with pytest.raises(
    checkpointing.CheckpointWriteError,
    match=f"cannot write the checkpoint of step 1 to {tmp_path}/checkpoints .Not a directory",
  ):
    checkpoints.save(1, small_state(1))
  checkpoints.wait_until_finished()  # a failure is raised once, not again in a `finally`


def run_main(workdir, *overrides, preexec_fn=None, wrap=()):
  return subprocess.run(
    [
      *wrap,
      sys.executable,
      "-m",
      "bnn_jax.main",
      "--config=configs/test.py",
      f"--workdir={workdir}",
      "--config.max_steps=4",
      *overrides,
    ],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
    capture_output=True,
    text=True,
    timeout=600,  # it hung (orbax's threads) before: a hang fails here instead of blocking
    preexec_fn=preexec_fn,
  )


def assert_one_sentence(result, workdir, os_error):
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
    f"error: cannot write the checkpoint of step 4 to {workdir}/checkpoints ({os_error}); free "
    f"space or make the folder writable, then rerun to resume from the last checkpoint"
  )
  assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr


@pytest.mark.slow  # trains through main in a new process
def test_main_ends_with_one_sentence_when_the_disk_is_full(tmp_path, monkeypatch):
  # A file size limit (RLIMIT_FSIZE) fails the checkpoint's writes in orbax's background
  # threads with EFBIG, as a full disk fails them with ENOSPC, for root too. 16 KiB lets the
  # workdir's small files through; the checkpoint's data files are larger.
  limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
  # The limit would also cut the test session's compilation cache entries (conftest.py) short:
  # this run reads the cache but writes nothing to it.
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1e9")
  result = run_main(tmp_path, preexec_fn=limit)
  assert_one_sentence(result, tmp_path, "File too large (EFBIG)")


def read_only_wrapper(folder: pathlib.Path) -> tuple[tuple[str, ...], str]:
  """(command prefix under which `folder` is read-only, the OS error a write then gets).

  chmod does not stop root: as root, a read-only bind mount in a mount namespace of its own
  (the test's process and the rest of the machine see the folder writable). Skips the test
  where neither way is open.
  """
  if os.geteuid() != 0:
    folder.chmod(0o555)
    return (), "Permission denied (EACCES)"
  script = f'mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} && exec "$0" "$@"'
  wrap = ("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
  if shutil.which("unshare") is None or subprocess.run([*wrap, "true"]).returncode != 0:
    pytest.skip("root cannot make a read-only folder here (no mount namespace)")
  return wrap, "Read-only file system (EROFS)"


@pytest.mark.slow  # trains through main in a new process
def test_main_ends_with_one_sentence_when_the_checkpoint_folder_is_read_only(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  wrap, os_error = read_only_wrapper(tmp_path / "checkpoints")
  result = run_main(tmp_path, wrap=wrap)
  assert_one_sentence(result, tmp_path, os_error)


# ----------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def trained(tiny_run):
  """The session's run of configs/test.py (conftest.py), checkpoints of steps 4, 8 and 12; tests
  damage copies of it."""
  workdir = tiny_run[1]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 8, 12]
  return workdir


def copy_of(trained, tmp_path) -> pathlib.Path:
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  return workdir


def test_export_reads_the_checkpoint_before_a_damaged_one_and_changes_nothing(trained, tmp_path):
  from bnn_jax import run
  from bnn_jax.deploy import export

  workdir = copy_of(trained, tmp_path)
  flip(data_files(workdir / "checkpoints" / "12")[0], 0.5)
  before = snapshot(workdir)
  assert int(run.restore_state(workdir)[3]["step"]) == 8
  _, _, model = run.restore_model(workdir)
  assert export.program_of_model(*run.load_run(workdir), model).ops
  assert snapshot(workdir) == before
  # The weights are step 8's: those of a copy without step 12, not those of the intact run.
  without_12 = tmp_path / "without_12"
  shutil.copytree(trained, without_12)
  shutil.rmtree(without_12 / "checkpoints" / "12")
  params = lambda model: jax.tree.leaves(nnx.state(model, nnx.Param))
  read, step_8 = params(model), params(run.restore_model(without_12)[2])
  step_12 = params(run.restore_model(trained)[2])
  assert all(np.array_equal(a, b) for a, b in zip(read, step_8, strict=True))
  assert any(not np.array_equal(a, b) for a, b in zip(read, step_12, strict=True))


def test_export_of_a_run_without_a_readable_checkpoint_exits_2_and_changes_nothing(
  trained, tmp_path
):
  workdir = copy_of(trained, tmp_path)
  for step in (4, 8, 12):
    flip(data_files(workdir / "checkpoints" / str(step))[0], 0.5)
  before = snapshot(workdir)
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "bnn_jax.deploy.export",
      f"--workdir={workdir}",
      f"--output={tmp_path / 'model.bnn'}",
    ],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: workdir {workdir} has no usable checkpoint (step 12: its file ")
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "model.bnn").exists()
  assert snapshot(workdir) == before


def test_training_on_a_checkpoint_of_another_width_is_one_sentence(trained, tmp_path, capfd):
  from bnn_jax import train
  from configs import test

  workdir = copy_of(trained, tmp_path)
  (workdir / "config.json").unlink()  # the check of the config against the run's is gone
  before = snapshot(workdir / "checkpoints")
  config = test.get_config()
  config.model.width = 0.125
  with pytest.raises(
    InputError,
    match=r"checkpoint of step 12 in .* another model: \S+ has shape \(8,\) there and \(16,\)",
  ):
    train.train_and_evaluate(config, workdir)
  assert snapshot(workdir / "checkpoints") == before
  assert not (workdir / "corrupt_checkpoints").exists()
  assert "Traceback" not in "".join(capfd.readouterr())


def test_asyncio_leftovers_of_a_failed_orbax_write_are_dropped_and_others_kept():
  """At exit asyncio logs "exception was never retrieved" for each write a failed save left
  behind; that noise (traceback through orbax) is dropped, any other asyncio error is kept."""
  checkpointing._quiet_orbax_failures()
  seen = []
  handler = logging.Handler()
  handler.emit = seen.append
  logger = logging.getLogger("asyncio")
  logger.addHandler(handler)

  def exc_info(filename):
    try:
      exec(compile("raise ValueError('OUT_OF_RANGE: Failed writing')", filename, "exec"))
    except ValueError:
      return sys.exc_info()

  try:
    for filename in ("/site-packages/orbax/checkpoint/serialization.py", "/elsewhere/mine.py"):
      logger.error("_GatheringFuture exception was never retrieved", exc_info=exc_info(filename))
  finally:
    logger.removeHandler(handler)
  assert [r.exc_info[2].tb_next.tb_frame.f_code.co_filename for r in seen] == ["/elsewhere/mine.py"]
