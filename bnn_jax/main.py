"""Command line: flags -> train.train_and_evaluate.

python -m bnn_jax.main --config=configs/vgg_small.py --workdir=DIR [--config.KEY=VALUE ...]

Several processes (launch/): the same command on every process; add --coordinator_address,
--num_processes and --process_id where the cluster is not detected (bnn_jax.distributed).
Bad input (a config, a flag, a data file, the workdir) ends the program with one sentence on
stderr and exit status 2 (bnn_jax.cli); the config file, its overrides and the workdir are
checked before jax is imported.
Ctrl-C or SIGTERM: one line on stderr, status 130 or 143; once a step has finished, the run
saves a checkpoint of the step it reached, and the same command resumes (bnn_jax.interrupts).
"""

from absl import flags, logging

from bnn_jax import cli, interrupts
from bnn_jax.errors import InputError
from bnn_jax.logs import quiet_library_logs

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "workdir", None, "Where checkpoints, metrics and the config go; rerun to resume."
)
cli.define_config_flag()
flags.mark_flags_as_required(["config", "workdir"])
flags.DEFINE_enum(
  "distributed",
  "auto",
  ["auto", "on", "off"],
  "Multi-process run (jax.distributed): 'auto' when the flags below are given or SLURM, Open "
  "MPI or a TPU pod is detected; 'on' always (Cloud TPU VM pod slices); 'off' never.",
)
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def main(argv, config):
  if len(argv) > 1:
    raise InputError(
      f"unexpected arguments {' '.join(argv[1:])!r}; settings are flags, e.g. --config.KEY=VALUE"
    )
  cli.check_workdir(FLAGS.workdir)
  interrupts.leave_now_with(interrupts.before_training_words(FLAGS.workdir))
  interrupts.watch_workdir(FLAGS.workdir)
  quiet_library_logs()
  # Import after flag parsing: jax picks up XLA_FLAGS and the platform when first imported.
  from bnn_jax import config_checks, distributed

  distributed.initialize(
    FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
  )
  import jax

  # The config's values, before the training code (orbax, optax, tensorboard) is imported.
  config_checks.check_config(config, jax.device_count())
  from bnn_jax import progress, train

  if jax.process_index() > 0:  # logs come from process 0; the others report only problems
    logging.set_verbosity(logging.WARNING)
  logging.info("%s", train.describe_run(config, FLAGS.workdir))
  try:
    result = train.train_and_evaluate(config, FLAGS.workdir)
  except progress.NonFiniteLossError as e:  # the run's outcome, not a crash: one sentence too
    cli.fail(e)
  if jax.process_index() == 0:
    print(f"final test accuracy {result['accuracy']:.4f} ({result['count']} examples)")


if __name__ == "__main__":
  cli.run(main, with_config=True, stops_on_signals=True)
