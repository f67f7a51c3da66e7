"""Export of a trained workdir, the file format's checks, and the infer command line."""

import os
import pathlib
import struct
import subprocess
import sys
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from PIL import Image

from bnn_jax import run
from bnn_jax.data import sources
from bnn_jax.deploy import export, inference, summary
from bnn_jax.deploy.program import ALIGN, PREAMBLE, from_bytes, to_bytes
from bnn_jax.errors import InputError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_module(module, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run(
    [sys.executable, "-m", module, *map(str, args)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.fixture(scope="module")
def trained(tiny_run):
  """A workdir of configs/test.py (tiny VGG-Small on fake 8x8 data), its final evaluation, the
  restored model and its Program."""
  _, workdir, result = tiny_run  # shared with other tests: read only
  config, spec, model = run.restore_model(workdir)
  return workdir, config, result, model, export.program_of_model(config, spec, model, workdir)


def _flat(tree) -> dict:
  """{path: numpy array}, without the "value" level that saved nnx variables carry."""
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {jax.tree_util.keystr(p).replace("['value']", ""): np.asarray(v) for p, v in leaves}


def test_restoring_initializes_nothing_and_gives_the_checkpointed_values(trained, monkeypatch):
  workdir = trained[0]
  # The restore target is abstract (run.abstract_state): nothing of init_state is needed.
  monkeypatch.setattr(run, "init_state", lambda *args: pytest.fail("restore ran init_state"))
  _, _, _, state = run.restore_state(workdir)
  assert int(state["step"]) == 12  # the newest of the checkpoints of steps 4, 8 and 12
  # The same arrays as orbax reads from the files without any target.
  raw = ocp.StandardCheckpointer().restore(pathlib.Path(workdir) / "checkpoints" / "12" / "default")
  restored, expected = _flat(nnx.to_pure_dict(state["params"])), _flat(raw["params"])
  assert restored.keys() == expected.keys() and len(expected) > 10
  assert all(np.array_equal(restored[k], expected[k]) for k in expected)


def test_export_command_prints_the_summary_and_writes_the_file(trained, tmp_path):
  workdir = trained[0]
  output = tmp_path / "model.bnn"
  done = run_module("bnn_jax.deploy.export", f"--workdir={workdir}", f"--output={output}")
  assert done.returncode == 0, done.stderr[-3000:]
  program = inference.load(output)
  s = summary.summarize(program)
  header = output.stat().st_size - s.deployed_bytes
  assert f"file size          {output.stat().st_size:>12,} bytes" in done.stdout
  assert f"deployed size      {s.deployed_bytes:>12,} bytes" in done.stdout
  assert "conv1" in done.stdout and "binary_conv" in done.stdout
  # The file is the deployed size plus the header: the preamble and the JSON op table.
  json_bytes = struct.unpack_from("<I", output.read_bytes(), 12)[0]
  assert 0 <= header - PREAMBLE.size - json_bytes < ALIGN * 4 * len(program.ops)


def test_exported_engine_reproduces_the_training_evaluation(trained):
  """Trained weights: the engine's top-1 equals train.evaluate's on the (fake) test set."""
  _, config, result, model, program = trained
  assert program.metadata["model"] == "vgg_small" and program.metadata["dataset"] == "fake"
  ds = sources.load(config.data)
  engine = inference.Engine(program)
  logits = np.asarray(engine.logits(ds.test_images))
  correct = int(np.sum(logits.argmax(-1) == ds.test_labels))
  assert correct == round(result["accuracy"] * result["count"])  # accuracy is a float32 ratio
  from tests.test_inference import check_engine_matches

  check_engine_matches(model, program, ds.test_images)


def test_export_refuses_a_folder_that_is_not_a_workdir_and_a_folder_as_output(tmp_path):
  with pytest.raises(InputError, match="holds no config.json: not a bnn_jax workdir"):
    export.program_of_workdir(tmp_path)
  with pytest.raises(InputError, match="is a folder; give a file name"):
    export.export(None, tmp_path)


# ----------------------------------------------------------------------------- file format


@pytest.fixture(scope="module")
def model_bytes(trained):
  return to_bytes(trained[-1])


def _first_nbytes_changed(data: bytes) -> bytes:
  """The first array's byte count with its first digit changed (same length, CRC fixed)."""
  at = data.index(b'"nbytes":') + len(b'"nbytes":')
  digit = data[at] - ord("0")
  return _with_crc(data[:at] + str((digit % 9) + 1).encode() + data[at + 1 :])


def _with_crc(data: bytes) -> bytes:
  """data with its CRC field recomputed (to reach the checks behind the CRC)."""
  header = struct.unpack_from("<I", data, 12)[0]
  body = data[PREAMBLE.size :]
  crc = zlib.crc32(body[header:], zlib.crc32(body[:header]))
  return data[:24] + struct.pack("<I", crc) + data[28:]


@pytest.mark.parametrize(
  "damage,message",
  [
    (lambda d: d[:20], "truncated: 20 bytes, shorter than the 32-byte header"),
    (lambda d: d[:-1], "truncated or has trailing bytes"),
    (lambda d: d + b"\0", "truncated or has trailing bytes"),
    (lambda d: b"PK\x03\x04" + d[4:], "is not a bnn_jax packed model"),
    (
      lambda d: d[:8] + struct.pack("<I", 2) + d[12:],
      "has format version 2; this bnn_jax reads version 1",
    ),
    (lambda d: d[:-5] + bytes([d[-5] ^ 1]) + d[-4:], "corrupt: its CRC-32 does not match"),
    (lambda d: _with_crc(d[:32] + b"[" + d[33:]), "malformed header"),
    (
      lambda d: _with_crc(d.replace(b'"kind":"binary_conv"', b'"kind":"binary_cnv!"', 1)),
      "unknown kind 'binary_cnv!'",
    ),
    (_first_nbytes_changed, "does not fit the"),
  ],
  ids=["short", "truncated", "trailing", "magic", "version", "flipped_bit", "json", "kind", "size"],
)
def test_damaged_files_raise_input_error_naming_the_problem(tmp_path, model_bytes, damage, message):
  path = tmp_path / "damaged.bnn"
  path.write_bytes(damage(model_bytes))
  with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
    inference.load(path)


def test_missing_file_raises_input_error(tmp_path):
  with pytest.raises(InputError, match="cannot read model file"):
    inference.load(tmp_path / "absent.bnn")


def test_file_round_trip_keeps_every_array_and_attribute(model_bytes):
  program = from_bytes(model_bytes)
  again = from_bytes(to_bytes(program))
  assert [(op.kind, op.name, op.inputs, op.shape, op.attrs) for op in program.ops] == [
    (op.kind, op.name, op.inputs, op.shape, op.attrs) for op in again.ops
  ]
  for a, b in zip(program.ops, again.ops):
    assert a.arrays.keys() == b.arrays.keys()
    for key in a.arrays:
      np.testing.assert_array_equal(a.arrays[key], b.arrays[key])
      assert a.arrays[key].dtype == b.arrays[key].dtype


# ----------------------------------------------------------------------------- infer command


def test_infer_classifies_npz_and_image_files(trained, tmp_path, model_bytes):
  config = trained[1]
  model = tmp_path / "m.bnn"
  model.write_bytes(model_bytes)
  ds = sources.load(config.data)
  np.savez(tmp_path / "test.npz", images=ds.test_images[:10], labels=ds.test_labels[:10])
  Image.fromarray(ds.test_images[0]).save(tmp_path / "first.png")
  done = run_module(
    "bnn_jax.deploy.infer", "--per_image", model, tmp_path / "test.npz", tmp_path / "first.png"
  )
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.splitlines()
  expected = np.asarray(inference.Engine(inference.load(model)).logits(ds.test_images[:10]))
  predicted = [int(line.split(": ")[1].split()[0]) for line in lines[:10]]
  assert predicted == list(expected.argmax(-1))
  assert lines[10].startswith(f"{tmp_path / 'first.png'}: {expected[0].argmax()} ")
  accuracy = np.mean(expected.argmax(-1) == ds.test_labels[:10])
  assert lines[12] == f"accuracy {accuracy:.4f} (10 labeled images)"  # after "11 images, ..."


def test_infer_refuses_images_of_another_size(tmp_path, model_bytes):
  model = tmp_path / "m.bnn"
  model.write_bytes(model_bytes)
  Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tmp_path / "odd.png")
  done = run_module("bnn_jax.deploy.infer", model, tmp_path / "odd.png")
  assert done.returncode == 2
  assert "odd.png has shape (9, 8, 3); this model takes (8, 8, 3)" in done.stderr
