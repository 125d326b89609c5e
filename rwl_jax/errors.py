"""The one exception type a user should ever see from rwl_jax: it carries a one-line message."""


class ConfigError(ValueError):
  """Bad input (config value, path, data shape): the message names the problem and the fix.

  `rwl_jax.main` prints it as a single `error: ...` line and exits with status 2.
  """


class RunError(RuntimeError):
  """A run that cannot go on (non-finite loss, interruption); the message says what was kept."""
