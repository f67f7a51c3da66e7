"""The light install: training, export, infer and summary run with TensorFlow unimportable."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "tensorflow_datasets", "clu")

# Installed as sitecustomize: importing a heavy package fails and is recorded, so that an import
# swallowed by an `except ImportError` is still seen. Probes (importlib.util.find_spec, as etils
# does) find a spec and are not counted: only executing the module is.
BLOCKER = textwrap.dedent(
  f"""
  import importlib.abc, importlib.machinery, os, sys

  class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
      return None

    def exec_module(self, module):
      with open(os.environ["BLOCKED_IMPORTS_LOG"], "a") as f:
        f.write(module.__name__ + "\\n")
      raise ImportError(f"{{module.__name__}} is blocked by the light-install test")

  class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
      if name.split(".")[0] in {HEAVY!r}:
        return importlib.machinery.ModuleSpec(name, _Refuse())
      return None

  sys.meta_path.insert(0, _Block())
  """
)


def _run(args, tmp_path, log):
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(ROOT)]),
    BLOCKED_IMPORTS_LOG=str(log),
  )
  return subprocess.run(
    [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )


@pytest.mark.slow  # 4 processes (train, export, infer, summary): about 15 s of CPU
def test_train_export_infer_summary_without_tensorflow(tmp_path):
  (tmp_path / "site").mkdir()
  (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
  log = tmp_path / "blocked.txt"
  workdir, model = tmp_path / "run", tmp_path / "model.bnn"

  trained = _run(
    ["-m", "bnn_jax.main", "--config=configs/test.py", f"--workdir={workdir}",
     "--config.max_steps=4"],
    tmp_path,
    log,
  )  # fmt: skip
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert "final test accuracy" in trained.stdout
  assert (workdir / "metrics.jsonl").exists()
  assert list(workdir.glob("events.out.tfevents.*")), "TensorBoard events need no TensorFlow"

  exported = _run(
    ["-m", "bnn_jax.deploy.export", f"--workdir={workdir}", f"--output={model}"], tmp_path, log
  )
  assert exported.returncode == 0, exported.stderr[-3000:]

  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / "few.npz", images=images, labels=np.zeros(5, np.int32))
  inferred = _run(
    ["-m", "bnn_jax.deploy.infer", str(model), str(tmp_path / "few.npz")], tmp_path, log
  )
  assert inferred.returncode == 0, inferred.stderr[-3000:]
  assert "accuracy" in inferred.stdout

  summary = _run(["-m", "bnn_jax.deploy.summary", "--config=configs/vgg_small.py"], tmp_path, log)
  assert summary.returncode == 0, summary.stderr[-3000:]
  assert "binary_conv" in summary.stdout

  blocked = log.read_text().split() if log.exists() else []
  assert blocked == [], f"these programs tried to import {sorted(set(blocked))}"


def test_cifar10_without_tfds_says_how_to_install_it(tmp_path):
  """CIFAR-10 needs the tfds extra: one sentence with the pip command, exit 2, no traceback."""
  (tmp_path / "site").mkdir()
  (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
  workdir = tmp_path / "run"
  done = _run(
    ["-m", "bnn_jax.main", "--config=configs/vgg_small.py", f"--workdir={workdir}"],
    tmp_path,
    tmp_path / "blocked.txt",
  )
  assert done.returncode == 2, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  last = done.stderr.strip().splitlines()[-1]
  assert last == (
    "error: data.name 'cifar10' is read with tensorflow-datasets, which this install lacks; "
    'add the tfds extra: pip install -e ".[tfds]"'
  )
  assert all(line.startswith("I") for line in done.stderr.strip().splitlines()[:-1])
  assert not workdir.exists()
