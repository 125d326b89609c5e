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


class DamagedFile(ConfigError):
  """A file of a workdir that does not read back as rwl_jax wrote it (cut short, not JSON, of
  another version). Its message is one line, `FILE: what is wrong; remedy`; .path and .problem
  let a caller that knows a better remedy say its own."""

  def __init__(self, path, problem: str, remedy: str):
    super().__init__(f"{path}: {problem}; {remedy}")
    self.path, self.problem = path, problem
