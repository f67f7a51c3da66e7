"""Command line: flags -> train.train_and_evaluate.

python -m bnn_jax.main --config=configs/vgg_small.py --workdir=DIR [--config.KEY=VALUE ...]
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bnn_jax.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "workdir", None, "Where checkpoints, metrics and the config go; rerun to resume."
)
config_flags.DEFINE_config_file("config", None, "A config file from configs/.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
  """Drops INFO records of orbax and tensorflow-datasets; they log every file they touch."""

  def filter(self, record) -> bool:
    noisy = ("/orbax/", "/tensorflow_datasets/", "/etils/")
    return record.levelno > 20 or not any(n in record.pathname for n in noisy)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Import after flag parsing: jax picks up XLA_FLAGS and the platform when first imported.
  from bnn_jax import train

  logging.info("config:\n%s", FLAGS.config)
  try:
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (InputError, train.NonFiniteLossError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"final test accuracy {result['accuracy']:.4f} ({result['count']} examples)")


if __name__ == "__main__":
  app.run(main)
