"""Command line: flags -> train.train_and_evaluate.

python -m bnn_jax.main --config=configs/vgg_small.py --workdir=DIR [--config.KEY=VALUE ...]

Several processes (launch/): the same command on every process; add --coordinator_address,
--num_processes and --process_id where the cluster is not detected (bnn_jax.distributed).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bnn_jax.errors import InputError
from bnn_jax.logs import quiet_library_logs

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "workdir", None, "Where checkpoints, metrics and the config go; rerun to resume."
)
config_flags.DEFINE_config_file("config", None, "A config file from configs/.", lock_config=True)
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet_library_logs()
  # Import after flag parsing: jax picks up XLA_FLAGS and the platform when first imported.
  from bnn_jax import distributed

  try:
    distributed.initialize(
      FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  import jax

  from bnn_jax import train

  if jax.process_index() > 0:  # logs come from process 0; the others report only problems
    logging.set_verbosity(logging.WARNING)
  logging.info("config:\n%s", FLAGS.config)
  try:
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (InputError, train.NonFiniteLossError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() == 0:
    print(f"final test accuracy {result['accuracy']:.4f} ({result['count']} examples)")


if __name__ == "__main__":
  app.run(main)
