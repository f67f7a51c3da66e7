"""A config's `sweep()`: its one format and loader; here expanded into one command per point.

python launch/sweep.py --config=configs/X.py --root=DIR [--launcher=local|print|"CMD"] \
  [--only=NAME,...] [-- --config.KEY=VALUE ...]

`sweep()` in a config file returns its points as [(name, {dotted key: value}), ...]: the name is
the point's folder, the overrides apply on top of the file's `get_config()` (`apply`). This
module reads that format for launch/ablation.py and the tests too. Each point becomes
`python -m bnn_jax.main --config=X --workdir=DIR/NAME --config.KEY=VALUE ...`
plus the flags after `--`. Launchers:
  local   run the points one after the other here (default); a finished point resumes to its end
          at once, an interrupted one from its checkpoint, so rerunning the sweep resumes it
  print   print the commands (for any scheduler)
  "CMD"   run `CMD CONFIG WORKDIR FLAGS...` for every point, e.g. "sbatch launch/slurm.sbatch"
          or launch/one_machine_gpus.sh (every script in launch/ takes these arguments)
"""

import argparse
import importlib.util
import pathlib
import shlex
import subprocess
import sys

import ml_collections

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: bnn_jax and the configs import from the root
  sys.path.insert(0, str(ROOT))

from bnn_jax.errors import InputError  # noqa: E402 (needs ROOT on the path)


def load_sweep(config_file: str) -> list[tuple[str, dict]]:
  """The points of the config file's sweep(): [(name, {dotted key: value}), ...] in its order."""
  path = pathlib.Path(config_file)
  spec = importlib.util.spec_from_file_location(f"_sweep_{path.stem}", path)
  if spec is None or not path.is_file():
    raise InputError(f"config file {config_file} does not exist")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "sweep"):
    raise InputError(f"config file {config_file} defines no sweep(); add one or pick another file")
  points = list(module.sweep())
  for point in points:
    if not _is_point(point):
      raise InputError(
        f"sweep() of {config_file} returns {point!r}; each point must be a pair "
        f"(name, {{dotted config key: value}})"
      )
  names = [name for name, _ in points]
  if len(set(names)) != len(names):
    raise InputError(f"sweep() of {config_file} repeats a point name: {names}")
  return [(name, dict(overrides)) for name, overrides in points]


def _is_point(point) -> bool:
  return (
    isinstance(point, tuple)
    and len(point) == 2
    and isinstance(point[0], str)
    and isinstance(point[1], dict)
  )


def select(points: list[tuple[str, dict]], names) -> list[tuple[str, dict]]:
  """The points named in `names` (all if empty), in sweep order; an unknown name is refused."""
  known = [name for name, _ in points]
  unknown = [n for n in names if n not in known]
  if unknown:
    raise InputError(f"{unknown[0]!r} names no point of sweep(); they are: {', '.join(known)}")
  return [p for p in points if not names or p[0] in names]


def apply(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of `config` with the dotted-key `overrides` set; a key it lacks is refused."""
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for part in [*parents, leaf]:
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise InputError(f"override {key!r} names no config key; start the config from base.py")
      parent, node = node, node[part]
    parent[leaf] = value
  return config


def flag_value(value) -> str:
  """A value as ml_collections' config flags parse it."""
  if isinstance(value, tuple | list):
    return "(" + ",".join(flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def commands(config_file: str, root: str, launcher: str, extra: list[str], only=()) -> list:
  """[(name, argv)] of every point to run."""
  out = []
  for name, overrides in select(load_sweep(config_file), only):
    workdir = str(pathlib.Path(root) / name)
    flags = [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()] + list(extra)
    if launcher in ("local", "print"):
      argv = [sys.executable, "-m", "bnn_jax.main", f"--config={config_file}"]
      argv += [f"--workdir={workdir}", *flags]
    else:
      argv = [*shlex.split(launcher), config_file, workdir, *flags]
    out.append((name, argv))
  return out


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="a config file that defines sweep()")
  parser.add_argument("--root", required=True, help="the points' workdirs go in ROOT/NAME")
  parser.add_argument("--launcher", default="local", help="local, print, or a command prefix")
  parser.add_argument("--only", default="", help="comma-separated point names to run")
  parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then flags for every point")
  args = parser.parse_args()
  extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
  only = [n for n in args.only.split(",") if n]
  try:
    points = commands(args.config, args.root, args.launcher, extra, only)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  failed = []
  for name, argv in points:
    if args.launcher == "print":
      print(shlex.join(argv))
      continue
    print(f"== {name}: {shlex.join(argv)}", flush=True)
    if subprocess.run(argv, cwd=ROOT).returncode != 0:
      failed.append(name)
  if failed:
    print(f"failed points: {', '.join(failed)}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
