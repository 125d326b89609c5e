"""Every path a user passes, as one type: etils.epath.Path, a local path or a URL (gs://, s3://...).

pathlib would turn `gs://bucket/run` into the local folder `gs:/bucket/run`, so a pod's
checkpoints would land on a VM's disk and vanish with it. epath (which Orbax uses too) keeps the
URL and reads and writes through the right filesystem (TensorFlow's gfile or fsspec's gcsfs/s3fs).
"""

from __future__ import annotations

import json
import os

from etils import epath

from rwl_jax.errors import ConfigError, DamagedFile

URL_SCHEMES = ("gs", "s3", "az", "hf")  # what epath reads and writes
CHECKPOINT_SCHEMES = ("gs",)  # what Orbax's TensorStore writes besides local files


def url_scheme(path: epath.PathLike) -> str | None:
  """'gs' for gs://bucket/x, None for a local path."""
  text = os.fspath(path)
  return text.split("://", 1)[0] if "://" in text else None


def as_path(value: epath.PathLike, what: str) -> epath.Path:
  """`value` as an epath.Path (~ expanded); ConfigError naming `what` for an unknown URL scheme."""
  scheme = url_scheme(value)
  if scheme is not None and scheme not in URL_SCHEMES:
    raise ConfigError(f"{what} {os.fspath(value)!r}: unsupported URL scheme '{scheme}://'; use a "
                      f"local path or {', '.join(s + '://' for s in URL_SCHEMES)}")
  path = epath.Path(value)
  return path if scheme else path.expanduser()


def workdir(value: epath.PathLike) -> epath.Path:
  """A run directory: local (made absolute, as Orbax needs) or a URL Orbax can checkpoint to."""
  path = as_path(value, "--workdir")
  scheme = url_scheme(path)
  if scheme is None:
    return path.resolve()
  if scheme not in CHECKPOINT_SCHEMES:
    raise ConfigError(f"--workdir {os.fspath(value)!r}: checkpoints can be written to a local path "
                      f"or {', '.join(s + '://' for s in CHECKPOINT_SCHEMES)} (Orbax's "
                      f"TensorStore), not {scheme}://")
  try:
    import google.cloud.storage  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    # Orbax asks the bucket about its namespace through it before listing checkpoints.
    raise ConfigError(f"--workdir {os.fspath(value)!r} needs google-cloud-storage: pip install "
                      "'rwl_jax[gcs]'") from None
  return path


def output_file(value: str, flag: str) -> epath.Path:
  """The output path of `flag`, its folder made now, so a bad path fails before any work."""
  path = as_path(value, flag)
  if path.is_dir():
    raise ConfigError(f"{flag}={value!r} is a folder; give a file name such as {path / 'plot.png'}")
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise ConfigError(f"{flag}={value!r}: its folder cannot be made ({error})") from None
  return path


def read_json_object(path: epath.Path, *, what: str, remedy: str) -> dict:
  """The JSON object in the file at `path`; DamagedFile (naming the file, what is wrong with it
  and `remedy`) when it cannot be read, is cut short, is not JSON or holds no object (`what`
  says what it should hold)."""
  try:
    data = path.read_bytes()
  except OSError as error:
    raise DamagedFile(path, f"cannot be read ({error.strerror or error})", remedy) from None
  if not data.strip():
    raise DamagedFile(path, "is empty (a write cut short?)", remedy)
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as error:
    raise DamagedFile(path, f"is not text (byte {error.start} is not UTF-8)", remedy) from None
  try:
    value = json.loads(text)
  except json.JSONDecodeError as error:
    where = f"{error.msg}: line {error.lineno} column {error.colno}"
    # The text stops before the JSON does: an error at its very end, or a string never closed.
    cut = error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string")
    raise DamagedFile(path, f"is cut short ({where})" if cut else f"is not JSON ({where})",
                      remedy) from None
  if not isinstance(value, dict):
    raise DamagedFile(path, f"holds a JSON {type(value).__name__}, not {what}", remedy)
  return value


def set_aside(path: epath.Path, label: str = "unreadable") -> epath.Path:
  """Renames a damaged file or folder to PATH.label (PATH.label.2, ... when that is taken), where
  no reader looks: kept for its owner, never deleted or overwritten. Returns the new path."""
  for index in range(1, 1000):
    aside = path.parent / (f"{path.name}.{label}" + (f".{index}" if index > 1 else ""))
    if not aside.exists():
      path.rename(aside)
      return aside
  raise OSError(f"{path}: no free name to set it aside as {path.name}.{label}.N")
