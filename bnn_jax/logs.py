"""Log settings of the command-line programs: our INFO lines, the libraries' warnings only."""


class _QuietLibraries:
  """Drops INFO records of libraries that log what only their developers need: orbax and
  tensorflow-datasets (every file they touch), jax (e.g. "Unable to initialize backend 'tpu'"
  on every machine without a TPU)."""

  def filter(self, record) -> bool:
    noisy = ("/orbax/", "/tensorflow_datasets/", "/etils/", "/jax/_src/", "/jaxlib/")
    return record.levelno > 20 or not any(n in record.pathname for n in noisy)


def quiet_library_logs() -> None:
  """Keeps a program's absl log readable: our INFO lines, the libraries' warnings and errors."""
  from absl import logging

  logging.get_absl_handler().addFilter(_QuietLibraries())
