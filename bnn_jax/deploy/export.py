"""Exports a trained workdir to one packed model file and prints its summary.

  python -m bnn_jax.deploy.export --workdir=DIR --output=FILE

Binary weights are stored one bit each, alpha, beta and BatchNorm are folded into integer
thresholds or per-channel affine terms (`bnn_jax.deploy.lowering`), full-precision layers are kept
in float32. The file format is described in `bnn_jax.deploy.program`;
`python -m bnn_jax.deploy.infer FILE ...` runs it.
"""

import pathlib

from absl import flags, logging

from bnn_jax.deploy import lowering, summary
from bnn_jax.deploy.program import Program, save
from bnn_jax.errors import InputError

# The training graph in bfloat16 rounds differently from the engine's float32 layers.
EXACT_DTYPES = ("float32",)


def program_of_workdir(workdir) -> Program:
  """The Program of a workdir's newest readable checkpoint (see run.restore_model)."""
  from bnn_jax import run  # flax, orbax: needed to read the checkpoint only

  workdir = pathlib.Path(workdir)
  if not (workdir / "config.json").exists():
    raise InputError(f"--workdir {str(workdir)!r} holds no config.json: not a bnn_jax workdir")
  config, spec, model = run.restore_model(workdir)
  return program_of_model(config, spec, model, workdir)


def program_of_model(config, spec, model, workdir=None) -> Program:
  """The Program of a model trained with `config` on data described by `spec` (a DataSpec)."""
  compute_dtype = config.get("compute_dtype", "float32")
  metadata = {
    "model": config.model.name,
    "binary": bool(config.model.binary),
    "dataset": config.data.name,
    "workdir": str(pathlib.Path(workdir).absolute()) if workdir else "",
    "compute_dtype": compute_dtype,
    "class_names": list(spec.class_names or _registry_class_names(config.data.name)),
  }
  if compute_dtype not in EXACT_DTYPES:
    logging.warning(
      "The model was trained with compute_dtype %s: the engine computes its float layers in "
      "float32, so its outputs can differ from the training graph's.",
      compute_dtype,
    )
  return lowering.lower(model, spec.image_shape, spec.mean, spec.std, metadata)


def _registry_class_names(name: str) -> tuple[str, ...]:
  """Class names of a dataset from the registry (runs saved before data_spec held them)."""
  from bnn_jax.data import DATASETS

  return DATASETS[name].class_names if name in DATASETS else ()


def export(program: Program, output) -> int:
  """Writes `program` to `output`; returns the file's size in bytes."""
  output = pathlib.Path(output)
  if output.is_dir():
    raise InputError(f"--output {str(output)!r} is a folder; give a file name, e.g. model.bnn")
  output.parent.mkdir(parents=True, exist_ok=True)
  return save(program, output)


def report(program: Program, file_bytes: int) -> str:
  """The summary table and the file size against the summary's deployed size."""
  s = summary.summarize(program)
  header = file_bytes - s.deployed_bytes
  margin = lowering.tie_margin(program)
  lines = [
    s.table(),
    f"file size          {file_bytes:>12,} bytes = deployed size + {header:,} bytes of header "
    f"({header / max(1, s.deployed_bytes):.2%})",
  ]
  if margin < 1e-3:
    lines.append(
      f"note: a threshold lies {margin:.2g} counts from an integer; a float32 evaluation of the "
      f"training graph can round such a tie either way"
    )
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags, defined only when run as a program (modules share absl's flags)."""
  flags.DEFINE_string("workdir", None, "Training workdir (its newest checkpoint is exported).")
  flags.DEFINE_string("output", None, "The packed model file to write, e.g. model.bnn.")


def main(argv):
  if len(argv) > 1:
    raise InputError(f"unexpected arguments {' '.join(argv[1:])!r}; give --workdir and --output")
  if not FLAGS.workdir or not FLAGS.output:
    raise InputError("give --workdir=DIR (a trained run) and --output=FILE (the model to write)")
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it reads at INFO
  program = program_of_workdir(FLAGS.workdir)
  size = export(program, FLAGS.output)
  print(report(program, size))
  print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
  from bnn_jax import cli

  define_flags()
  cli.run(main)
