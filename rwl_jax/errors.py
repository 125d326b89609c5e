"""The one exception type a user should ever see from rwl_jax: it carries a one-line message."""


class ConfigError(ValueError):
  """Bad input (config value, path, data shape): the message names the problem and the fix.

  `rwl_jax.main` prints it as a single `error: ...` line and exits with status 2.
  """


def first_line(error: BaseException) -> str:
  """The first line of an exception's message (its type name when it has none): library errors
  often carry pages of context, and an `error:` line carries one."""
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


class RunError(RuntimeError):
  """A run that cannot go on (non-finite loss, interruption); the message says what was kept."""
