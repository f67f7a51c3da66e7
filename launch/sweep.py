"""Expands a config's `sweep()` into runs: one workdir and one command per point.

python launch/sweep.py --config=configs/X.py --root=DIR [--launcher=local|print|"CMD"] \
  [--only=NAME,...] [-- --config.KEY=VALUE ...]

`sweep()` in the config file returns the points, either [(name, {dotted key: value}), ...]
(the form launch/ablation.py uses) or [{dotted key: value}, ...] (names made from the values).
Each point becomes `python -m bnn_jax.main --config=X --workdir=DIR/NAME --config.KEY=VALUE ...`
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
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_sweep(config_file: str) -> list[tuple[str, dict]]:
  """The points of the config file's sweep() as [(name, {dotted key: value})]."""
  if str(ROOT) not in sys.path:  # config files import `configs.base`
    sys.path.insert(0, str(ROOT))
  path = pathlib.Path(config_file)
  spec = importlib.util.spec_from_file_location(f"_sweep_{path.stem}", path)
  if spec is None or not path.exists():
    raise SystemExit(f"error: config file {config_file} does not exist")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "sweep"):
    raise SystemExit(f"error: {config_file} defines no sweep()")
  points = []
  for point in module.sweep():
    name, overrides = point if isinstance(point, tuple) else (point_name(point), point)
    points.append((name, dict(overrides)))
  names = [n for n, _ in points]
  if len(set(names)) != len(names):
    raise SystemExit(f"error: sweep() of {config_file} repeats a point name: {names}")
  return points


def point_name(overrides: dict) -> str:
  """A folder name from the values, e.g. {"seed": 1, "model.width": 0.5} -> seed=1,width=0.5."""
  parts = [f"{k.rsplit('.', 1)[-1]}={flag_value(v)}" for k, v in overrides.items()]
  return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(parts)) or "default"


def flag_value(value) -> str:
  """A value as ml_collections' config flags parse it."""
  if isinstance(value, tuple | list):
    return "(" + ",".join(flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def commands(config_file: str, root: str, launcher: str, extra: list[str], only=()) -> list:
  """[(name, argv)] of every point to run."""
  out = []
  for name, overrides in load_sweep(config_file):
    if only and name not in only:
      continue
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
  failed = []
  for name, argv in commands(args.config, args.root, args.launcher, extra, only):
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
