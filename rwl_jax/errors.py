"""The one exception type a user should ever see from rwl_jax: it carries a one-line message."""

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
