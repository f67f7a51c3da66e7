"""The command-line programs as a new user meets them: errors, console, infer's summary, usage.

Every error case runs the real command in a subprocess and asserts one sentence on stderr, exit
status 2 and no traceback. The cases that must fail before jax is imported run with jax, flax
and TensorFlow unimportable (a sitecustomize that refuses them), which proves that they do.
"""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bnn_jax import cli
from bnn_jax.errors import InputError

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "tensorflow_datasets")


def import_blocker(packages) -> str:
  """sitecustomize source that makes `packages` (and their submodules) fail on import."""
  return textwrap.dedent(
    f"""
    import importlib.abc, importlib.machinery, sys

    class _Refuse(importlib.abc.Loader):
      def create_module(self, spec):
        return None

      def exec_module(self, module):
        raise ImportError(f"{{module.__name__}} is blocked: this error must come before it")

    class _Block(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {tuple(packages)!r}:
          return importlib.machinery.ModuleSpec(name, _Refuse())
        return None

    sys.meta_path.insert(0, _Block())
    """
  )


BLOCKER = import_blocker(HEAVY)


@pytest.fixture(scope="module")
def no_heavy_imports(tmp_path_factory):
  """A PYTHONPATH entry whose sitecustomize makes jax, flax, TensorFlow ... unimportable."""
  site = tmp_path_factory.mktemp("site")
  (site / "sitecustomize.py").write_text(BLOCKER)
  return site


def run_program(*args, site=None, timeout=600):
  """`python ARGS` in the repository root; site: a folder put first on PYTHONPATH."""
  path = [str(site)] if site else []
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([*path, str(ROOT)]), TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run(
    [sys.executable, *map(str, args)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def assert_one_sentence(done, *expected, after_info_logs=False):
  """Exit status 2, and stderr is one line `error: ...` holding every `expected` text.

  after_info_logs: the error may follow INFO log lines (the run's config line, data loading).
  """
  assert done.returncode == 2, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  lines = done.stderr.strip().splitlines()
  if after_info_logs:
    not_info = [line for line in lines[:-1] if not line.startswith("I")]
    assert not not_info, done.stderr[-3000:]
    lines = lines[-1:]
  assert len(lines) == 1, done.stderr[-3000:]
  assert lines[0].startswith("error: ")
  for text in expected:
    assert text in lines[0]
  return lines[0]


def main_args(tmp_path, *args):
  return ["-m", "bnn_jax.main", "--config=configs/test.py", f"--workdir={tmp_path / 'run'}", *args]


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
  "args,expected",
  [
    (
      ["--config.optimizer.learnig_rate=0.1"],
      "the config has no key 'optimizer.learnig_rate'; did you mean "
      "--config.optimizer.learning_rate?",
    ),
    (["--config.learning_rate=0.1"], "did you mean --config.optimizer.learning_rate?"),
    (["--config.batch_size=abc"], "--config.batch_size=abc is not an integer"),
    (["--config.model.binary=maybe"], "--config.model.binary=maybe is not a bool"),
    (["--config.optimizer=3"], "--config.optimizer names a group of settings"),
    (["--config.batch_size"], "--config.batch_size needs a value"),
    (["--workdirr=x"], "Unknown command line flag 'workdirr'"),
  ],
)
def test_bad_overrides_are_one_sentence_before_jax(tmp_path, no_heavy_imports, args, expected):
  done = run_program(*main_args(tmp_path, *args), site=no_heavy_imports)
  assert_one_sentence(done, expected)
  assert not (tmp_path / "run").exists()


def test_missing_flags_are_one_sentence(no_heavy_imports):
  done = run_program("-m", "bnn_jax.main", site=no_heavy_imports)
  assert_one_sentence(done, "--config and --workdir are required")


@pytest.mark.parametrize(
  "source,expected",
  [
    (None, "config file configs/nope.py does not exist"),
    ("x = 1\n", "defines no get_config()"),
    ("def get_config(:\n", "raised SyntaxError at line 1"),
    (
      "from configs import base\n\ndef get_config():\n  c = base.get_config()\n  return c.modle\n",
      "raised AttributeError at line 5",
    ),
    (
      "from configs import base\n\ndef get_config():\n  c = base.get_config()\n"
      "  c.batch_size = '128'\n  return c\n",
      "raised TypeError at line 5",
    ),
    ("def get_config():\n  return {'seed': 0}\n", "returned dict, not an ml_collections"),
  ],
)
def test_bad_config_files_are_one_sentence_before_jax(tmp_path, no_heavy_imports, source, expected):
  file = "configs/nope.py"
  if source is not None:
    file = tmp_path / "config.py"
    file.write_text(source)
  args = ["-m", "bnn_jax.main", f"--config={file}", f"--workdir={tmp_path / 'run'}"]
  assert_one_sentence(run_program(*args, site=no_heavy_imports), expected)


def test_misspelt_config_file_names_the_nearest(tmp_path, no_heavy_imports):
  args = ["-m", "bnn_jax.main", "--config=configs/fashion_mnst.py", f"--workdir={tmp_path}"]
  done = run_program(*args, site=no_heavy_imports)
  assert_one_sentence(done, "did you mean configs/fashion_mnist.py?")


def test_bad_config_value_is_printed_once(tmp_path):
  done = run_program(*main_args(tmp_path, "--config.batch_size=-1"))
  line = assert_one_sentence(done)
  assert line == "error: config.batch_size = -1 is not allowed; it must be a number > 0"
  assert not (tmp_path / "run").exists()


def test_mnist_config_needs_its_folder(tmp_path):
  args = ["-m", "bnn_jax.main", "--config=configs/mnist.py", f"--workdir={tmp_path / 'run'}"]
  assert_one_sentence(run_program(*args), "config.data.name 'mnist' needs config.data.path")


def test_overrides_take_the_type_of_the_value_they_replace():
  config = cli.load_config(
    str(ROOT / "configs" / "test.py"),
    [
      ("model.binary", "false"),
      ("max_steps", "1e3"),
      ("optimizer.learning_rate", "3e-4"),
      ("data.fake_image_shape", "(4,4,1)"),
      ("optimizer.decay_epochs", "5"),
      ("optimizer.decay_epochs", "7"),
      ("data.name", "mnist"),
      ("optimizer.nesterov", None),
    ],
  )
  assert config.model.binary is False and config.optimizer.nesterov is True
  assert config.max_steps == 1000 and isinstance(config.max_steps, int)
  assert config.optimizer.learning_rate == 3e-4
  assert config.data.fake_image_shape == (4, 4, 1)
  assert config.optimizer.decay_epochs == (5, 7)  # a repeated tuple flag collects its values
  assert config.data.name == "mnist"
  with pytest.raises(AttributeError):  # locked: a misspelt key in code fails too
    config.optimizer.learnig_rate = 1.0


def test_split_overrides_keeps_the_other_flags():
  argv = ["prog", "--workdir=/w", "--config.a.b=1", "--config.c", "2", "--noconfig.d", "--x"]
  rest, found = cli.split_overrides(argv)
  assert rest == ["prog", "--workdir=/w", "--x"]
  assert found == [("a.b", "1"), ("c", "2"), ("d", "false")]


def test_config_checks_refuse_decay_epochs_out_of_order(test_config):
  from bnn_jax import config_checks

  for bad in [(150.0, 100.0), (-1.0, 10.0), (10.0, 10.0), ("10",)]:
    test_config.optimizer.decay_epochs = bad
    with pytest.raises(InputError, match=r"config.optimizer.decay_epochs = .* increasing order"):
      config_checks.check_config(test_config, num_devices=1)
  test_config.optimizer.decay_epochs = (0.0, 2.5)
  config_checks.check_config(test_config, num_devices=1)


def test_configs_that_train_no_step_are_refused(test_config):
  from bnn_jax import config_checks

  test_config.num_epochs = 0.1  # 4 steps an epoch: 0.4 rounds to 0 steps
  with pytest.raises(InputError, match=r"num_epochs = 0.1 trains 0 steps .* at least 0.25"):
    config_checks.check_against_data(test_config, num_train=64)
  test_config.num_epochs = 0.25
  config_checks.check_against_data(test_config, num_train=64)


# ----------------------------------------------------------------------------- folders


def test_workdir_that_is_a_file_is_one_sentence(tmp_path, no_heavy_imports):
  file = tmp_path / "file"
  file.write_text("")
  args = ["-m", "bnn_jax.main", "--config=configs/test.py", f"--workdir={file}"]
  assert_one_sentence(run_program(*args, site=no_heavy_imports), f"--workdir {file} is a file")


def test_workdir_under_a_file_is_one_sentence(tmp_path, no_heavy_imports):
  # The tests run as root, whom no chmod stops from writing; but no user can create a folder
  # inside a regular file (ENOTDIR), so a path under a file is an unwritable workdir for all.
  file = tmp_path / "file"
  file.write_text("")
  args = ["-m", "bnn_jax.main", "--config=configs/test.py", f"--workdir={file}/a/run"]
  done = run_program(*args, site=no_heavy_imports)
  assert_one_sentence(done, f"cannot be created: {file} is a file, not a folder")


def test_workdir_not_writable_is_refused(tmp_path, monkeypatch):
  # As root a read-only folder is still writable; os.access stands in for a regular user.
  monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
  with pytest.raises(InputError, match="cannot be written by this user"):
    cli.check_workdir(str(tmp_path))
  with pytest.raises(InputError, match=r"cannot be created \(.* is not writable\)"):
    cli.check_workdir(str(tmp_path / "new" / "run"))


# ----------------------------------------------------------------------------- data


def _npz_folder(folder, train_labels, test_labels=(0, 1), shape=(8, 8, 3)):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for split, labels in (("train", np.asarray(train_labels)), ("test", np.asarray(test_labels))):
    images = rng.integers(0, 256, (len(labels), *shape), np.uint8)
    np.savez(folder / f"{split}.npz", images=images, labels=labels)
  return folder


def test_a_label_of_a_billion_is_one_sentence(tmp_path):
  labels = np.zeros(64, np.int64)
  labels[5] = 10**9
  folder = _npz_folder(tmp_path / "data", labels)
  done = run_program(*main_args(tmp_path, "--config.data.name=npz", f"--config.data.path={folder}"))
  expected = ("the largest training label is 1000000000", "declare the count")
  assert_one_sentence(done, *expected, after_info_logs=True)
  assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- other programs


def test_ablation_collect_only_on_an_empty_folder(tmp_path, no_heavy_imports):
  args = ["-m", "launch.ablation", "--config=configs/ablation_fashion_mnist.py"]
  args += [f"--output={tmp_path / 'empty'}", "--collect_only"]
  done = run_program(*args, site=no_heavy_imports)
  assert_one_sentence(done, "holds no finished runs")
  assert not (tmp_path / "empty").exists()


def test_ablation_and_summary_report_config_errors_the_same_way(tmp_path, no_heavy_imports):
  args = ["-m", "launch.ablation", "--config=configs/ablation_fashion_mnist.py"]
  done = run_program(*args, f"--output={tmp_path}", "--config.modle.width=1", site=no_heavy_imports)
  assert_one_sentence(done, "no key 'modle.width'; did you mean --config.model.width?")
  args = ["-m", "bnn_jax.deploy.summary", "--config=configs/nope.py"]  # imports jax first
  assert_one_sentence(run_program(*args), "does not exist")


def test_export_of_a_folder_that_is_no_workdir(tmp_path):
  args = ["-m", "bnn_jax.deploy.export", f"--workdir={tmp_path}", f"--output={tmp_path}/m.bnn"]
  assert_one_sentence(run_program(*args), "holds no config.json: not a bnn_jax workdir")


# ----------------------------------------------------------------------------- launch scripts


def test_one_machine_gpus_usage():
  done = subprocess.run(
    ["bash", "launch/one_machine_gpus.sh"], cwd=ROOT, capture_output=True, text=True
  )
  assert done.returncode == 2
  assert done.stdout.startswith("One machine, several GPUs")
  assert "launch/one_machine_gpus.sh CONFIG WORKDIR" in done.stdout
  assert "set -euo" not in done.stdout and "#" not in done.stdout


def test_tpu_pod_usage_lists_the_subcommands_without_tpu_settings():
  env = {k: v for k, v in os.environ.items() if k not in ("TPU_NAME", "ZONE")}
  for args in ([], ["frobnicate"]):
    done = subprocess.run(
      ["bash", "launch/tpu_pod.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    for sub in ("create", "setup", "run CONFIG WORKDIR", "delete"):
      assert f"launch/tpu_pod.sh {sub}" in done.stdout
    assert "TPU_NAME:" not in done.stderr
  assert "unknown subcommand 'frobnicate'" in done.stderr


# ----------------------------------------------------------------------------- console


def _metrics(loss=1.0, accuracy=0.5):
  return {"loss": np.float32(loss), "ce": np.float32(loss), "accuracy": np.float32(accuracy)}


def test_progress_leaves_out_compilation_and_counts_the_pauses(
  tmp_path, test_config, monkeypatch, caplog
):
  """A fake clock: compiling takes 30 s, a step 2 s, the first pause 10 s, the next 3 s."""
  from bnn_jax import progress as progress_line
  from bnn_jax import run

  caplog.set_level("INFO")
  clock = [100.0]
  monkeypatch.setattr(progress_line.time, "time", lambda: clock[0])
  progress = progress_line.Progress(test_config, 0, 12, run.MetricsLog(tmp_path))
  progress.announce(test_config, 64, 4, 12)  # evaluations and checkpoints every 4 steps

  def steps(first, last, seconds_each):
    caplog.clear()
    for step in range(first, last + 1):
      clock[0] += seconds_each
      progress.add(step, _metrics())
    progress.flush(None)
    return caplog.text

  clock[0] += 28.0  # the first step compiles: 30 s in all
  assert "step 1: compiled and ran in 30.0 s" in steps(1, 1, 2.0)  # flushed alone: no speed
  assert "step 1/12" in caplog.text and "images/s" not in caplog.text
  assert "time left known from the next log line" in caplog.text
  line = steps(2, 2, 2.0)
  assert "8 images/s (0.50 steps/s), 0m20s left, plus 3 evaluations or checkpoints" in line
  line = steps(3, 4, 2.0)
  assert "[######..............] step 4/12: train loss 1.0000, train accuracy 0.5000" in line
  assert "8 images/s (0.50 steps/s), 0m16s left, plus 3 evaluations" in line
  clock[0] += 10.0  # evaluation and checkpoint at step 4
  progress.pause()
  line = steps(5, 8, 2.0)  # 4 steps x 2 s; the first pause compiled: not a usual one
  assert "8 images/s (0.50 steps/s), 0m08s left, plus 2 evaluations or checkpoints" in line
  clock[0] += 3.0
  progress.pause()
  line = steps(9, 10, 2.0)  # 2 steps x 2 s + the pause at 12 x 3 s (the first one left out)
  assert "8 images/s (0.50 steps/s), 0m07s left" in line
  assert "done" in steps(11, 12, 2.0)
  logged = [r for r in run.MetricsLog(tmp_path).read() if "train/images_per_sec" in r]
  assert [r["step"] for r in logged] == [2, 4, 8, 10, 12]
  assert {r["train/images_per_sec"] for r in logged} == {8.0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A short run of configs/test.py through main (its console), exported to a model file."""
  folder = tmp_path_factory.mktemp("trained")
  workdir, model = folder / "run", folder / "model.bnn"
  done = run_program(
    "-m", "bnn_jax.main", "--config=configs/test.py", f"--workdir={workdir}",
    "--config.max_steps=4", "--config.log_every_steps=2",
  )  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  exported = run_program("-m", "bnn_jax.deploy.export", f"--workdir={workdir}", f"--output={model}")
  assert exported.returncode == 0, exported.stderr[-3000:]
  return workdir, model, done


@pytest.fixture(scope="module")
def model_file(tiny_run, tmp_path_factory):
  """The session's run of configs/test.py (conftest.py), exported to a model file."""
  from bnn_jax.deploy import export

  _, workdir, _ = tiny_run
  model = tmp_path_factory.mktemp("model") / "model.bnn"
  export.export(export.program_of_workdir(workdir), model)
  return model


@pytest.mark.slow  # trains through main and exports (module fixture)
def test_main_logs_one_config_line_and_true_progress(trained):
  workdir, _, done = trained
  log = done.stderr
  assert (
    "vgg_small (binary, width 0.0625) on fake: 3 epochs, stopping at step 4, batch 16, adam " in log
  )
  assert f"lr 0.001 (cosine); workdir {workdir} (the full config: its config.json)" in log
  assert "batch_size" not in log and "weight_estimator" not in log  # no dump of the config
  assert (workdir / "config.json").exists()
  assert "fake data: 64 training and 40 test images of 8x8x3, 4 classes." in log
  assert "Unable to initialize backend" not in log and "orbax" not in log
  assert "step 1: compiled and ran in" in log
  progress = r"\[##########..........\] step 2/4: train loss \d\.\d{4}, train accuracy \d\.\d{4}, "
  assert re.search(progress + r"\d+ images/s \(\d+\.\d\d steps/s\), \dm\d\ds left", log)
  assert len(log.strip().splitlines()) < 12, log
  assert done.stdout.startswith("final test accuracy")


# ----------------------------------------------------------------------------- infer


def test_infer_report_counts_per_class_and_top_classes():
  from bnn_jax.deploy import infer

  probs = np.eye(3)[[0, 0, 1, 2, 2, 1, 1]]  # predictions 0 0 1 2 2 | unlabeled: 1 1
  labels = np.array([0, 1, 1, 2, 2, -1, -1])
  lines = infer.report(probs, labels, ["cat", "dog", "owl"])
  assert lines[0] == "7 images, 5 of them labeled"
  assert lines[1] == "accuracy 0.8000 (5 labeled images)"
  assert lines[2].split() == [
    "class",
    "images",
    "accuracy",
    "most",
    "often",
    "predicted",
    "instead",
  ]
  assert lines[3].split() == ["0", "cat", "1", "1.0000", "-"]
  assert lines[4].split() == ["1", "dog", "2", "0.5000", "0", "cat", "(1)"]
  assert lines[5].split() == ["2", "owl", "2", "1.0000", "-"]
  assert lines[6] == "most predicted classes of the 2 unlabeled images: 1 dog 2 (100.0%)"


def test_infer_prints_a_summary_and_per_image_lines_on_request(model_file, tmp_path):
  from bnn_jax.deploy import program as program_file

  program = program_file.load(model_file)
  program.metadata["class_names"] = ["cat", "dog", "owl", "yak"]
  named = tmp_path / "named.bnn"
  program_file.save(program, named)
  rng = np.random.default_rng(1)
  labels = np.arange(40) % 4
  np.savez(
    tmp_path / "test.npz", images=rng.integers(0, 256, (40, 8, 8, 3), np.uint8), labels=labels
  )
  np.savez(tmp_path / "new.npz", images=rng.integers(0, 256, (5, 8, 8, 3), np.uint8))

  summary = run_program(
    "-m", "bnn_jax.deploy.infer", named, tmp_path / "test.npz", tmp_path / "new.npz"
  )
  assert summary.returncode == 0, summary.stderr[-3000:]
  assert "xla_bridge" not in summary.stderr  # jax's INFO noise is filtered
  lines = summary.stdout.strip().splitlines()
  assert len(lines) == 1 + 1 + 1 + 4 + 1  # counts, accuracy, header, 4 classes, top classes
  assert lines[0] == "45 images, 40 of them labeled"
  assert [line.split()[:2] for line in lines[3:7]] == [
    ["0", "cat"],
    ["1", "dog"],
    ["2", "owl"],
    ["3", "yak"],
  ]
  assert lines[7].startswith("most predicted classes of the 5 unlabeled images: ")

  each = run_program(
    "-m", "bnn_jax.deploy.infer", "--per_image", named, tmp_path / "test.npz", tmp_path / "new.npz"
  )
  assert each.returncode == 0, each.stderr[-3000:]
  per_image, rest = each.stdout.splitlines()[:45], each.stdout.splitlines()[45:]
  assert rest == lines  # the same summary after the per-image lines
  assert per_image[0].startswith(f"{tmp_path / 'test.npz'}[0]: ")
  predicted = np.array([int(line.split(": ")[1].split()[0]) for line in per_image])
  names = [line.split(": ")[1].split()[1] for line in per_image]
  assert names == [["cat", "dog", "owl", "yak"][k] for k in predicted]
  accuracy = np.mean(predicted[:40] == labels)
  assert lines[1] == f"accuracy {accuracy:.4f} (40 labeled images)"
  for k in range(4):
    mine = predicted[:40][labels == k]
    assert float(lines[3 + k].split()[3]) == pytest.approx(np.mean(mine == k), abs=1e-4)


@pytest.mark.parametrize(
  "labels,message",
  [
    (np.array([0.0, 1.0, 2.0]), "labels are float64; they must be integer class indices"),
    (np.array([[0], [1], [2]]), "labels have shape (3, 1)"),
    (np.array([0, 1, 4]), "label 4 is not one of this model's 4 classes"),
  ],
)
def test_infer_checks_labels_as_training_does(model_file, tmp_path, labels, message):
  np.savez(tmp_path / "bad.npz", images=np.zeros((3, 8, 8, 3), np.uint8), labels=labels)
  done = run_program("-m", "bnn_jax.deploy.infer", model_file, tmp_path / "bad.npz")
  assert_one_sentence(done, message)


# ----------------------------------------------------------------------------- CIFAR-10 via tfds

# Installed as sitecustomize: no network (every name lookup and connection fails at once, as
# offline) and no TensorFlow, so the CIFAR-10 sentences must come before tfds downloads anything
# and before TensorFlow (seconds to import) is loaded. tensorflow_datasets itself imports.
OFFLINE = textwrap.dedent(
  """
  import socket

  def _offline(*args, **kwargs):
    raise socket.gaierror(-2, "Name or service not known (offline: the test's sitecustomize)")

  socket.getaddrinfo = socket.create_connection = _offline
  """
) + import_blocker(["tensorflow"])


def _run_cifar10(tmp_path, *args):
  """vgg_small.py offline, with a fresh HOME and TFDS_DATA_DIR unset; (result, HOME)."""
  site, home = tmp_path / "site", tmp_path / "home"
  site.mkdir(exist_ok=True)
  home.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(OFFLINE)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), HOME=str(home))
  env.pop("TFDS_DATA_DIR", None)
  done = subprocess.run(
    [sys.executable, "-m", "bnn_jax.main", "--config=configs/vgg_small.py",
     f"--workdir={tmp_path / 'run'}", *args],
    cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  return done, home


def _folders(root: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())


def test_cifar10_offline_without_data_says_what_to_fetch_and_leaves_nothing(tmp_path):
  pytest.importorskip("tensorflow_datasets", reason='needs pip install -e ".[tfds]"')
  done, home = _run_cifar10(tmp_path)
  assert_one_sentence(
    done,
    f"cifar10 is not prepared in {home / 'tensorflow_datasets'}",
    "fetch cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html",
    "--config.data.manual_dir=FOLDER",
    "--config.data.name=npz --config.data.path=FOLDER",
    after_info_logs=True,
  )
  assert _folders(home) == [] and not (tmp_path / "run").exists()

  data_dir = tmp_path / "tfds"
  done, home = _run_cifar10(tmp_path, f"--config.data.tfds_data_dir={data_dir}")
  assert_one_sentence(done, f"not prepared in {data_dir} and", after_info_logs=True)
  assert not data_dir.exists() and _folders(home) == [] and not (tmp_path / "run").exists()


def test_cifar10_manual_dir_without_the_archive_names_folder_and_file(tmp_path):
  pytest.importorskip("tensorflow_datasets", reason='needs pip install -e ".[tfds]"')
  (tmp_path / "archives").mkdir()
  done, home = _run_cifar10(tmp_path, f"--config.data.manual_dir={tmp_path / 'archives'}")
  assert_one_sentence(
    done,
    f"data.manual_dir {tmp_path / 'archives'} has no cifar-10-binary.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar.html",
    after_info_logs=True,
  )
  assert _folders(home) == [] and not (tmp_path / "run").exists()
