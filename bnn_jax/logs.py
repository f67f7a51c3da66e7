"""Log settings of the command-line programs: our INFO lines, the libraries' warnings only."""


class _QuietLibraries:
  """Drops INFO records of orbax and tensorflow-datasets; they log every file they touch."""

  def filter(self, record) -> bool:
    noisy = ("/orbax/", "/tensorflow_datasets/", "/etils/")
    return record.levelno > 20 or not any(n in record.pathname for n in noisy)


def quiet_library_logs() -> None:
  """Keeps a program's absl log readable: our INFO lines, the libraries' warnings and errors."""
  from absl import logging

  logging.get_absl_handler().addFilter(_QuietLibraries())
