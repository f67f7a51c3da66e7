"""The one exception type for bad user input: config values, data files, checkpoints."""


class InputError(ValueError):
  """A bad config value, data file or checkpoint; the message is one sentence naming the value
  and what is allowed. `main` prints it without a traceback and exits with status 2."""
