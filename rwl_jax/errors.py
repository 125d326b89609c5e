"""The exceptions a user sees from rwl_jax, each with a one-line message the command line prints
as `error: ...` (exit status 2): ConfigError (bad input), its DamagedFile (a workdir's file that
does not read back), RunError (a run that cannot go on)."""

import errno

_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


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


def out_of_space(error: BaseException) -> bool:
  """True when `error` (or what caused it) is a full disk or an exceeded quota: an OSError, or
  TensorStore's message naming the errno (Orbax re-raises it as ValueError('RESOURCE_EXHAUSTED:
  ... No space left on device [os_error_code='28']'))."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _OUT_OF_SPACE:
      return True
    text = str(error)
    if "No space left on device" in text or "Disk quota exceeded" in text or any(
        f"os_error_code='{code}'" in text for code in _OUT_OF_SPACE):
      return True
    error = error.__cause__ or error.__context__
  return False
