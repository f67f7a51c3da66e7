"""Every command and repository path that README.md and docs/*.md give exists and runs its --help.

The documents are read when the tests run (nothing of them is copied here): every
`python -m MODULE`, every script (`python path.py`, `bash launch/x.sh`, `sbatch launch/x.sbatch`,
launch/ and benchmarks/ scripts named anywhere), every path into the repository's folders inside
backticks or code blocks, every `--config=FILE` and every `--config.KEY`. Each module and script
of this repository (documented or in launch/ and benchmarks/) runs once with --help, in a fresh
empty folder: it must exit 0, print its usage and create nothing, there or in the repository.
"""

import concurrent.futures
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import tempfile

from bnn_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = ("bnn_jax", "configs", "launch", "benchmarks", "tests", "notebooks", "docs")
OWN_PACKAGES = ("bnn_jax", "launch", "benchmarks")
RUNNER = r"(?<![\w./-])(?:python3?|bash|sh|sbatch(?: --\S+)*)"  # not the `sh` of `x.sh`
SCRIPT = r"(?:\./)?(?:[\w.-]+/)*[\w.-]+\.(?:py|sh|sbatch)"
# Placeholders the documents write for a name the reader chooses: configs/X.py, DIR/..., <name>.
PLACEHOLDER = re.compile(r"<|\{|\.\.\.|(?:^|/)[A-Z]+(?:\.\w+)?(?:/|$)")


def documents() -> list[pathlib.Path]:
  return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def commands(text: str) -> list[str]:
  """The document's lines, those continued with a trailing backslash joined into one."""
  return re.sub(r"\\\n\s*", " ", text).splitlines()


def code(text: str) -> list[str]:
  """The contents of its fenced code blocks and of its `inline code` spans."""
  blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
  prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
  return blocks + re.findall(r"`([^`\n]+)`", prose)


def mentions() -> dict[str, dict[str, set[str]]]:
  """{kind: {thing: documents naming it}} for modules, scripts, paths, configs and keys."""
  found = {kind: {} for kind in ("modules", "scripts", "paths", "configs", "keys")}

  def add(kind, thing, doc):
    found[kind].setdefault(thing, set()).add(doc.name)

  for doc in documents():
    text = doc.read_text()
    for line in commands(text):
      for module in re.findall(r"\bpython3? -m ([\w.]+)", line):
        add("modules", module, doc)
      for script in re.findall(rf"{RUNNER} ({SCRIPT})", line):
        add("scripts", script.removeprefix("./"), doc)
      for script in re.findall(rf"(?<![\w/.-])((?:launch|benchmarks)/{SCRIPT})", line):
        add("scripts", script, doc)
      config = re.search(r"--config[= ](\S+?\.py(?::\w+)?)\b", line)
      if config and not PLACEHOLDER.search(config.group(1)):
        add("configs", config.group(1), doc)
      for key in re.findall(r"--(?:no)?config\.([\w.]+)", line):
        if not key.isupper():  # --config.KEY=VALUE
          add("keys", (key, config.group(1) if config else ""), doc)
    for span in code(text):
      for path in re.findall(rf"(?<![\w/.-])((?:{'|'.join(FOLDERS)})/[\w./*-]*)", span):
        path = path.rstrip(".")
        if not PLACEHOLDER.search(path):
          add("paths", path, doc)
  return found


MENTIONS = mentions()


def where(kind: str, thing) -> str:
  return ", ".join(sorted(MENTIONS[kind][thing]))


def module_file(module: str) -> pathlib.Path | None:
  """The file `python -m module` runs from the repository root, if it exists."""
  base = ROOT.joinpath(*module.split("."))
  for file in (base.with_suffix(".py"), base / "__main__.py"):
    if file.is_file():
      return file
  return None


def test_the_documents_are_read():
  """The extraction finds what every version of the README must give (else it is broken)."""
  assert "bnn_jax.main" in MENTIONS["modules"]
  assert MENTIONS["paths"] and MENTIONS["configs"] and MENTIONS["keys"]


def test_documented_modules_exist():
  missing = []
  for module in sorted(MENTIONS["modules"]):
    if module.split(".")[0] in OWN_PACKAGES:
      found = module_file(module) is not None
    else:  # pytest, venv, pip: installed, not ours
      found = importlib.util.find_spec(module) is not None
    if not found:
      missing.append(f"python -m {module} ({where('modules', module)})")
  assert not missing, f"documented modules that do not exist: {missing}"


def test_documented_scripts_and_paths_exist():
  missing = []
  for script in sorted(MENTIONS["scripts"]):
    if not (ROOT / script).is_file():
      missing.append(f"script {script} ({where('scripts', script)})")
  for path in sorted(MENTIONS["paths"]):
    exists = list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()
    if not exists:
      missing.append(f"{path} ({where('paths', path)})")
  assert not missing, f"documented files that do not exist: {missing}"


def test_documented_configs_and_keys_exist():
  problems = []
  for config in sorted(MENTIONS["configs"]):
    if not (ROOT / config.split(":")[0]).is_file():
      problems.append(f"--config={config} ({where('configs', config)})")
  keys = {"": set(cli.config_keys(cli.load_config(str(ROOT / "configs/base.py"))))}
  for key, config in sorted(MENTIONS["keys"]):
    if config not in keys:  # a key a config adds (ImageNet's data keys) is valid with it
      try:
        keys[config] = keys[""] | set(cli.config_keys(cli.load_config(str(ROOT / config))))
      except Exception:  # reported above when the file is missing
        keys[config] = keys[""]
    if key not in keys[config]:
      problems.append(f"--config.{key} ({where('keys', (key, config))})")
  assert not problems, f"documented configs or keys that do not exist: {problems}"


def help_commands() -> dict[str, list[str]]:
  """{name: command line} of every module and script of this repository to run with --help."""
  runs = {}
  for module in MENTIONS["modules"]:
    if module.split(".")[0] in OWN_PACKAGES and module_file(module):
      runs[f"python -m {module}"] = [sys.executable, "-m", module, "--help"]
  scripts = {s for s in MENTIONS["scripts"] if (ROOT / s).is_file()}
  for folder in ("launch", "benchmarks"):  # also those no document names
    for file in (ROOT / folder).iterdir():
      text = file.read_text() if file.suffix in (".py", ".sh", ".sbatch") else ""
      if "__main__" in text or text.startswith("#!"):
        scripts.add(str(file.relative_to(ROOT)))
  for script in scripts:
    runner = [sys.executable] if script.endswith(".py") else ["bash"]
    runs[script] = [*runner, str(ROOT / script), "--help"]
  return runs


def _files(root: pathlib.Path) -> set[str]:
  """Every file and folder under root, caches of Python and tools aside."""
  skip = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"}
  found = set()
  for folder, subfolders, files in os.walk(root):
    subfolders[:] = [d for d in subfolders if d not in skip]
    found.update(os.path.join(folder, name) for name in subfolders + files)
  return found


def _run_help(command: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
  """(the result, what it created) of the command run in a fresh empty folder."""
  with tempfile.TemporaryDirectory() as here:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, cwd=here, env=env, capture_output=True, text=True, timeout=600)
    return done, sorted(os.listdir(here))


def test_every_module_and_script_answers_help_and_starts_nothing():
  runs = help_commands()
  assert any(name.startswith("python -m bnn_jax.main") for name in runs)
  before = _files(ROOT)
  workers = min(4, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    results = dict(zip(runs, pool.map(_run_help, runs.values())))
  problems = []
  for name, (done, created) in sorted(results.items()):
    if done.returncode != 0:
      problems.append(f"{name} --help exits {done.returncode}: {done.stderr.strip()[-300:]}")
    elif not done.stdout.strip():
      problems.append(f"{name} --help prints no usage")
    if created:
      problems.append(f"{name} --help created {created} in its working folder")
  new = sorted(_files(ROOT) - before)
  assert not problems, "\n".join(problems)
  assert not new, f"--help created files in the repository: {new[:10]}"


def test_layout_names_every_module():
  """docs/layout.md names every module of bnn_jax/ (`name.py` or `name`)."""
  text = (ROOT / "docs" / "layout.md").read_text()
  named = set(re.findall(r"`(?:[\w/]+/)?(\w+)(?:\.py)?`", text))
  modules = [p for p in (ROOT / "bnn_jax").rglob("*.py") if p.name != "__init__.py"]
  missing = sorted(str(p.relative_to(ROOT)) for p in modules if p.stem not in named)
  assert not missing, f"docs/layout.md does not name {missing}"


BUNDLED = "bnn_jax/data/fashion_mnist_small"
DEPLOY_EXAMPLE = [  # the README's Deploy example, on the session's trained run for quickstart's
  ["-m", "bnn_jax.deploy.export", "--workdir={workdir}", "--output={model}"],
  ["-m", "bnn_jax.deploy.infer", "{model}", f"{BUNDLED}/ankle_boot.png", f"{BUNDLED}/trouser.png",
   f"{BUNDLED}/bag.png", f"{BUNDLED}/test.npz"],
]  # fmt: skip


def test_deploy_example_runs_on_what_ships(fashion_mnist_small_run, tmp_path):
  """Export a trained run, then classify the bundled PNGs and the bundled test set with it."""
  _, workdir, evaluation = fashion_mnist_small_run
  model = tmp_path / "quickstart.bnn"
  outputs = []
  for args in DEPLOY_EXAMPLE:
    args = [a.format(workdir=workdir, model=model) for a in args]
    done = subprocess.run(
      [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outputs.append(done.stdout)
  lines = outputs[1].splitlines()
  assert lines[0].startswith("2003 images"), outputs[1]
  # The bundled test set's accuracy is the training evaluation's (the PNGs carry no labels).
  assert lines[1] == f"accuracy {evaluation['accuracy']:.4f} (2000 labeled images)", outputs[1]
