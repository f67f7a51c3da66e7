"""What the command-line programs share: configs from flags, and the one error exit.

Every program (bnn_jax.main, bnn_jax.deploy.export, .infer, .summary, launch.ablation) starts
through `run`: bad input (InputError: a config, a flag, a file, a folder) is printed as one
sentence on stderr, without a traceback, and the program exits with status 2.

Configs: `--config=FILE` names a Python file whose get_config() returns a ConfigDict, and
`--config.KEY=VALUE` sets one of its values, parsed as the type of the value it replaces
(`--config.KEY` alone and `--noconfig.KEY` set a bool). They are read here, before jax or any
model code is imported: a misspelt key, a missing file or a value of the wrong type is reported
in well under a second.
"""

import ast
import difflib
import importlib.util
import os
import pathlib
import re
import sys
import traceback

import ml_collections
from absl import app, flags

from bnn_jax import interrupts
from bnn_jax.errors import InputError

FLAGS = flags.FLAGS
EXIT_STATUS = 2  # bad input; 1 stays for crashes
_HELP_FLAGS = {"-?", "-help", "--help", "-helpshort", "--helpshort", "-helpfull", "--helpfull"}


def fail(error) -> None:
  """Prints `error` as one line on stderr and exits with status 2."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  sys.exit(EXIT_STATUS)


def define_config_flag(help_text: str = "A config file from configs/.") -> None:
  """The --config flag (a file name); its --config.KEY=VALUE overrides are read by `run`."""
  flags.DEFINE_string(
    "config",
    None,
    f"{help_text} Change its values with --config.KEY=VALUE, e.g. "
    "--config.optimizer.learning_rate=3e-4.",
  )


def run(main, *, with_config: bool = False, stops_on_signals: bool = False) -> None:
  """absl's app.run(main) with one sentence and status 2 for bad flags and InputError.

  with_config: the program has a --config flag (define_config_flag); its overrides are split
  off before absl parses the other flags, and main is called as main(argv, config).
  stops_on_signals: Ctrl-C and SIGTERM stop the program with one line and status 130 or 143
  (bnn_jax.interrupts; training stops at a step boundary and saves).
  """
  overrides: list[tuple[str, str | None]] = []
  if stops_on_signals:  # first: before any thread starts
    interrupts.install(interrupts.starting_words)

  def parse_flags(argv):
    rest, found = split_overrides(argv) if with_config else (argv, [])
    overrides.extend(found)
    try:
      return FLAGS(rest)
    except flags.Error as e:
      fail(f"{_flag_problem(e)} (--help lists the flags)")
    except SystemExit as e:  # absl prints the usage for --help, then exits with status 1
      raise SystemExit(0 if e.code == 1 and _HELP_FLAGS.intersection(rest) else e.code) from None

  def guarded_main(argv):
    try:
      if with_config:
        return main(argv, load_config(FLAGS.config, overrides))
      return main(argv)
    except InputError as e:
      fail(e)
    except interrupts.Stopped as e:
      interrupts.leave(e.message)

  app.run(guarded_main, flags_parser=parse_flags)


def _flag_problem(error: flags.Error) -> str:
  """absl's message in one line; its required-flag messages (one line each) as one sentence."""
  missing = re.findall(r"Flag --(\w+) must have a value other than None", str(error))
  if missing:
    names = " and ".join(f"--{name}" for name in missing)
    return f"{names} {'is' if len(missing) == 1 else 'are'} required"
  return " ".join(str(error).split())


# ----------------------------------------------------------------------------- overrides

_OVERRIDE = re.compile(r"^--?(no)?config\.([^=]+)(?:=(.*))?$", re.DOTALL)


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str | None]]]:
  """(argv without the --config.KEY[=VALUE] arguments, [(KEY, VALUE or None), ...]).

  `--config.KEY VALUE` (the value as the next argument) is read as --config.KEY=VALUE;
  `--noconfig.KEY` is KEY=false.
  """
  rest, found, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    match = _OVERRIDE.match(arg) if i > 0 and arg != "--" else None
    if arg == "--":  # absl: everything after -- is positional
      rest += argv[i:]
      break
    if match is None:
      rest.append(arg)
    else:
      negated, key, value = match.groups()
      if negated:
        value = "false" if value is None else value
      elif value is None and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
        i += 1
        value = argv[i]
      found.append((key, value))
    i += 1
  return rest, found


# ----------------------------------------------------------------------------- config files


def load_config(path: str | None, overrides=()) -> ml_collections.ConfigDict:
  """get_config() of the file `path` with `overrides` [(dotted key, text or None)] applied.

  The result is locked (values can change, keys cannot be added). Every problem raises
  InputError with one sentence: a missing or failing file, an unknown key (naming the nearest
  valid one), a value that does not parse as the type it replaces.
  """
  if not path:
    raise InputError(
      "--config is required: give a config file, e.g. --config=configs/fashion_mnist.py"
    )
  config = _load_file(path)
  _check_order(overrides)
  grouped: dict[str, list[str | None]] = {}
  for key, value in overrides:
    grouped.setdefault(key, []).append(value)
  for key, values in grouped.items():
    set_override(config, key, values)
  config.lock()
  return config


def _load_file(path: str) -> ml_collections.ConfigDict:
  argument = None
  if ":" in path and not pathlib.Path(path).exists():  # FILE:ARG -> get_config(ARG)
    path, argument = path.rsplit(":", 1)
  file = pathlib.Path(path)
  if file.is_dir():
    raise InputError(f"--config={path} is a folder; give a config file, e.g. {_example(file)}")
  if not file.is_file():
    raise InputError(f"config file {path} does not exist{_nearest_file_hint(file)}")
  spec = importlib.util.spec_from_file_location("bnn_jax_config_file", file)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise InputError(f"config file {path} defines no get_config(); start from configs/base.py")
    config = module.get_config() if argument is None else module.get_config(argument)
  except InputError:
    raise
  except Exception as e:  # the file is the user's code: any error is a bad config file
    raise InputError(f"config file {path} raised {_describe(e, file)}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise InputError(
      f"config file {path}: get_config() returned {type(config).__name__}, not an "
      f"ml_collections.ConfigDict"
    )
  return config


def _describe(error: Exception, file: pathlib.Path) -> str:
  """'NameError at line 12: name 'x' is not defined': the error and the file's line."""
  line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
  if line is None:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if _same_file(f.filename, file)]
    line = frames[-1].lineno if frames else None
  inner = error  # ConfigDict wraps a KeyError in an AttributeError: its text is the message
  while inner.args and isinstance(inner.args[0], BaseException):
    inner = inner.args[0]
  if isinstance(error, SyntaxError):
    text = error.msg
  else:
    text = inner.args[0] if len(inner.args) == 1 and isinstance(inner.args[0], str) else str(inner)
  text = " ".join(text.split())[:300]  # one line
  where = f" at line {line}" if line else ""
  return f"{type(error).__name__}{where}" + (f": {text}" if text else "")


def _same_file(name: str, file: pathlib.Path) -> bool:
  try:
    return os.path.samefile(name, file)
  except OSError:
    return False


def _example(folder: pathlib.Path) -> str:
  files = sorted(p.name for p in folder.glob("*.py") if p.name not in ("__init__.py", "base.py"))
  return str(folder / files[0]) if files else "configs/fashion_mnist.py"


def _nearest_file_hint(file: pathlib.Path) -> str:
  folder = file.parent
  if not folder.is_dir():
    return f" (there is no folder {folder}; run from the repository root for configs/)"
  names = [p.name for p in folder.glob("*.py") if p.name != "__init__.py"]
  close = difflib.get_close_matches(file.name, names, n=1)
  if close:
    return f"; did you mean {folder / close[0]}?"
  return f"; {folder} holds {', '.join(sorted(names)) or 'no config files'}"


# ----------------------------------------------------------------------------- one override


def config_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every dotted key of `config`'s values (not of its groups)."""
  keys = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += config_keys(value, f"{prefix}{key}.")
    else:
      keys.append(f"{prefix}{key}")
  return keys


def _check_order(overrides) -> None:
  keys = [k for k, _ in overrides]
  for i, key in enumerate(keys):
    for later in keys[i + 1 :]:
      if key.startswith(later + "."):
        raise InputError(f"--config.{later} comes after --config.{key} and would undo it")


def set_override(config: ml_collections.ConfigDict, key: str, values: list[str | None]) -> None:
  """Sets config's dotted `key` from its command-line text(s); InputError naming what is wrong."""
  *parents, leaf = key.split(".")
  node = config
  for part in [*parents, leaf]:
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise InputError(f"--config.{key}: the config has no key {key!r}{_nearest_key(config, key)}")
    parent, node = node, node[part]
  kind = parent.get_type(leaf)
  if kind is ml_collections.ConfigDict or isinstance(node, ml_collections.ConfigDict):
    example = next(iter(config_keys(node)), "")
    raise InputError(
      f"--config.{key} names a group of settings; set one of them, e.g. --config.{key}."
      f"{example.split('.')[0]}=..."
    )
  value = _parse_all(key, values, kind, node)
  try:
    parent[leaf] = value
  except (TypeError, ValueError) as e:
    raise InputError(
      f"--config.{key}={values[-1]} does not fit config.{key} = {node!r} ({e})"
    ) from e


def _nearest_key(config, key: str) -> str:
  keys = config_keys(config)
  close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
  if not close:  # a key given without its group, or with the wrong one
    leaf = key.split(".")[-1]
    same_leaf = [k for k in keys if k.split(".")[-1] == leaf]
    close = same_leaf[:1] or difflib.get_close_matches(leaf, keys, n=1, cutoff=0.6)
  if close:
    return f"; did you mean --config.{close[0]}?"
  return "; configs/base.py lists every key"


def _parse_all(key, values, kind, current):
  if kind is tuple and len(values) > 1:  # --config.t=1 --config.t=2: the tuple (1, 2)
    return tuple(_parse(key, v, object, None) for v in values)
  return _parse(key, values[-1], kind, current)


_TRUE, _FALSE = ("true", "t", "1", "yes"), ("false", "f", "0", "no")


def _parse(key: str, text: str | None, kind, current):
  """The command-line text of `key` as a value of `kind` (the type of its `current` value)."""
  if text is None:
    if kind is bool:
      return True
    raise InputError(f"--config.{key} needs a value: --config.{key}=VALUE (now {current!r})")
  given = f"--config.{key}={text}"
  if kind is bool:
    if text.lower() in _TRUE + _FALSE:
      return text.lower() in _TRUE
    raise InputError(f"{given} is not a bool; config.{key} must be true or false")
  if kind is int:
    try:
      return int(text)
    except ValueError:
      number = _float_or_none(text)
      if number is not None and number.is_integer():
        return int(number)
      raise InputError(
        f"{given} is not an integer, which config.{key} must be (now {current!r})"
      ) from None
  if kind is float:
    number = _float_or_none(text)
    if number is None:
      raise InputError(f"{given} is not a number, which config.{key} must be (now {current!r})")
    return number
  if kind is str:
    return text
  if kind is tuple:
    try:
      value = ast.literal_eval(text)
    except (SyntaxError, ValueError):
      raise InputError(
        f"{given} is not a tuple; write it as --config.{key}='(a, b)' (now {current!r})"
      ) from None
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
  try:  # None or another type: a Python literal, else the text itself
    return ast.literal_eval(text)
  except (SyntaxError, ValueError):
    return text


def _float_or_none(text: str) -> float | None:
  try:
    return float(text)
  except ValueError:
    return None


# ----------------------------------------------------------------------------- folders


def check_workdir(workdir: str) -> None:
  """InputError unless `workdir` is a folder this process can write, or can be created as one.

  Checked before anything is imported or read, so that a bad --workdir costs a second, not the
  data loading and compilation before the first checkpoint.
  """
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise InputError(f"--workdir {workdir} is a file; give a folder (it is created if missing)")
  existing = path
  while not existing.exists():  # the nearest part of the path that exists
    if not existing.parent.is_dir() and existing.parent.exists():
      raise InputError(
        f"--workdir {workdir} cannot be created: {existing.parent} is a file, not a folder"
      )
    if existing.parent == existing:
      break
    existing = existing.parent
  if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
    what = "written" if existing == path else f"created ({existing} is not writable)"
    raise InputError(f"--workdir {workdir} cannot be {what} by this user")
