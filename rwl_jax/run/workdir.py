"""A workdir that defends itself: one run at a time, and a rerun that either continues the run it
finds or stops with one line saying why, before anything in the workdir changes.

    with WorkdirLock(path):                                  # 'lock': host, pid, heartbeat
      changes = check_rerun(path, config, has_checkpoint=..., accept_change=...)
      ...                                                    # config.json written only after this
      record_config(path, config, changes, step)

What a rerun may change: the settings that do not change what is trained (RUNTIME_FIELDS: logging,
checkpoint cadence, evaluation, profiling, where the data and caches live). Anything else (method,
model, data, batch, schedule, epochs) stops the rerun with the differing fields, unless it is
passed --accept_config_change; every accepted change is appended to config_history.jsonl.

A damaged file (config.json cut short or of another version, a torn history line, a lock of
garbage) is never rewritten with defaults: read_config, the one reader of a run's config.json
(evaluate, export), names it in one line with the remedy; a rerun sets it aside as
config.json.unreadable where that is safe (nothing trained yet, or --accept_config_change).
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from rwl_jax.run import experiment
from rwl_jax import parallel, paths
from rwl_jax.configs import common
from rwl_jax.errors import ConfigError, DamagedFile

CONFIG_NAME = "config.json"
LOCK_NAME = "lock"
HISTORY_NAME = "config_history.jsonl"
HEARTBEAT_SECONDS = 30.0
# A lock whose holder runs on another host (liveness unknowable from here) is stale once its
# heartbeat is this old: four missed beats.
STALE_SECONDS = 4 * HEARTBEAT_SECONDS
# A lock that does not parse may be one a starting run has created and not yet written (a few
# bytes, microseconds); older than this it is garbage (a crash mid-write, a stray file).
UNREADABLE_LOCK_SECONDS = 5.0
# What a reader of config.json tells the user to do when it is damaged.
_RESTORE_CONFIG = ("restore it from a copy (a finished run's results.json holds one under "
                   "\"config\"), or rerun training on this --workdir with the run's --config and "
                   "--accept_config_change, which writes it again")

# Settings a rerun may change freely: they change how a run is watched, saved or fed, not what it
# trains. Prefixes end with '.'. The online probe is trained in the step, so it is not one of them.
RUNTIME_FIELDS = ("log_every_steps", "checkpoint_every_epochs", "keep_checkpoints",
                  "checkpoint_async", "profile.", "compilation_cache_dir",
                  "data.prefetch_batches", "data.cache_dir", "data.decode_workers",
                  "data.image_dir", "data.tfds_data_dir", "data.max_eval_examples",
                  "data.eval_split", "data.eval_image_dir", "data.eval_train_split", "eval.")
TRAINED_EVAL_FIELDS = ("eval.online_probe", "eval.online_probe_learning_rate")


def prepare(workdir: epath.Path) -> None:
  """Makes the workdir (and its parents); one ConfigError line when that is impossible."""
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"--workdir {os.fspath(workdir)} is a file, not a folder")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise ConfigError(f"--workdir {os.fspath(workdir)} cannot be made: "
                      f"{error.strerror or error}") from None


def _saved_config(path: epath.Path, remedy: str) -> dict[str, Any]:
  return paths.read_json_object(path, what="a config (an object of settings)", remedy=remedy)


def read_config(workdir: epath.Path) -> ml_collections.ConfigDict:
  """The config of the run in workdir (its config.json over today's defaults), checked as a
  training config is; one ConfigError line naming the file otherwise.

  A config.json "of another version" is one this rwl_jax cannot train: a setting of another
  type or an unknown value (a newer or older rwl_jax wrote it, or a hand edit). Settings this
  version does not know at all are a warning: a config file may add its own.
  """
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"--workdir {os.fspath(workdir)} is a file, not a folder")
  path = workdir / CONFIG_NAME
  if not path.exists():
    raise ConfigError(f"{path} not found: --workdir must be a directory a training run wrote")
  saved = _saved_config(path, _RESTORE_CONFIG)
  unknown = sorted(set(_flatten(saved)) - set(_flatten(common.get_config().to_dict())))
  if unknown:
    logging.warning("%s has settings this rwl_jax does not know, ignored: %s", path,
                    ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else ""))
  config = ml_collections.ConfigDict(common.with_defaults(saved))
  try:
    experiment.validate_config(config)
  except ConfigError as error:
    raise DamagedFile(path, f"not a config this rwl_jax can use ({error})", "it was written by "
                      "another rwl_jax version or edited: use the version that wrote it, or "
                      "correct that setting") from None
  return config


def _is_runtime(field: str) -> bool:
  if field in TRAINED_EVAL_FIELDS:
    return False
  return any(field == name or (name.endswith(".") and field.startswith(name))
             for name in RUNTIME_FIELDS)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{name}."))
    else:
      flat[f"{prefix}{name}"] = list(value) if isinstance(value, tuple) else value
  return flat


def config_values(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """'section.field' -> value (tuples as lists, as JSON keeps them), over today's defaults, so a
  workdir written before a setting existed compares as having its default."""
  tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  return _flatten(common.with_defaults(json.loads(json.dumps(tree, default=str))))


def differences(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  return {name: (saved.get(name), new.get(name)) for name in sorted(set(saved) | set(new))
          if saved.get(name) != new.get(name)}


def check_rerun(workdir: epath.Path, config: ml_collections.ConfigDict, *, has_checkpoint: bool,
                accept_change: bool) -> dict[str, tuple[Any, Any]]:
  """The settings this run changes against the workdir's config.json: {field: (old, new)}.

  ConfigError when the workdir holds a checkpoint and a changed setting changes what is trained,
  unless accept_change. Nothing is written here.
  """
  saved_path = workdir / CONFIG_NAME
  if not saved_path.exists():
    return {}
  try:
    saved = _saved_config(saved_path, "")
  except DamagedFile as damaged:
    if has_checkpoint and not accept_change:
      raise DamagedFile(saved_path, damaged.problem, "so this rerun cannot be checked against "
                        "the run it continues: restore it (a finished run's results.json holds a "
                        "copy under \"config\"), or pass --accept_config_change to continue with "
                        "this command's settings (the damaged file is kept as "
                        f"{CONFIG_NAME}.unreadable)") from None
    why = ("--accept_config_change" if has_checkpoint else "nothing was trained yet")
    logging.warning("%s %s; this run goes on with this command's settings (%s), and the damaged "
                    "file is set aside when the new one is written", saved_path, damaged.problem,
                    why)
    # The change accepted cannot be listed field by field; the history says what was accepted.
    return {CONFIG_NAME: (damaged.problem, "this command's settings")} if has_checkpoint else {}
  changed = differences(config_values(saved), config_values(config))
  if not has_checkpoint:
    return changed  # nothing trained yet: nothing to protect
  meaningful = {name: values for name, values in changed.items() if not _is_runtime(name)}
  if meaningful and not accept_change:
    listed = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in meaningful.items())
    raise ConfigError(
        f"{workdir} holds a run whose settings differ from this command's: {listed}; rerun with "
        f"the run's settings, use a new --workdir, or pass --accept_config_change to continue this "
        f"run with the new ones (recorded in {HISTORY_NAME})")
  return changed


def record_config(workdir: epath.Path, config: ml_collections.ConfigDict,
                  changes: dict[str, tuple[Any, Any]], step: int) -> None:
  """Writes config.json and appends the accepted changes to the history (process 0 only).

  A config.json that does not read back (check_rerun let the run go on) is set aside as
  config.json.unreadable first, never overwritten. Both files are written beside and then moved
  into place, so a crash mid-write leaves the old one whole.
  """
  if jax.process_index() != 0:
    return
  path = workdir / CONFIG_NAME
  if path.exists():
    try:
      _saved_config(path, "")
    except DamagedFile as damaged:
      logging.warning("%s %s: set aside as %s", path, damaged.problem, paths.set_aside(path).name)
  _replace(path, config.to_json_best_effort(indent=2, sort_keys=True).encode())
  if not changes:
    return
  row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": step,
         "changes": {name: {"old": old, "new": new} for name, (old, new) in changes.items()}}
  history = workdir / HISTORY_NAME
  earlier = history.read_bytes() if history.exists() else b""
  if earlier and not earlier.endswith(b"\n"):  # a torn last row: kept; ours on a line of its own
    logging.warning("%s: its last line is cut short; kept as it is, the new row follows on a line "
                    "of its own", history)
    earlier += b"\n"
  _replace(history, earlier + json.dumps(row, default=str).encode() + b"\n")
  logging.info("settings changed on resume at step %d: %s", step,
               ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changes.items()))


def _replace(path: epath.Path, data: bytes) -> None:
  temporary = path.parent / f"{path.name}.writing"
  temporary.write_bytes(data)
  temporary.replace(path)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, someone else's
    return True
  return True


class WorkdirLock:
  """workdir/lock: one run at a time in a workdir (process 0 holds it for the job).

  The lock names its holder (host, pid, start) and carries a heartbeat refreshed every
  HEARTBEAT_SECONDS. A second run stops with one line naming the holder. A lock left behind by a
  crash (kill -9, a lost node) is taken over with a warning: at once when its holder was on this
  host and its pid is gone, else once its heartbeat is STALE_SECONDS old. Taking over renames the
  stale lock first, so of two runs taking over at once only one gets it.
  """

  def __init__(self, workdir: epath.Path):
    self.path = workdir / LOCK_NAME
    self._token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._beat: threading.Thread | None = None
    self._held = False

  def _record(self) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": self._token,
            "started": self._started, "heartbeat": time.time()}

  def _create(self) -> bool:
    """Creates the lock if none exists; False if one does."""
    text = json.dumps(self._record())
    if paths.url_scheme(self.path) is None:
      try:
        descriptor = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      except OSError as error:
        raise ConfigError(f"--workdir {os.fspath(self.path.parent)} is not writable: "
                          f"{error.strerror or error}") from None
      with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
      return True
    # Object stores have no exclusive create here: write, then check that ours is the one kept.
    if self.path.exists():
      return False
    self.path.write_text(text)
    time.sleep(1.0)
    return self._read().get("token") == self._token

  def _read(self) -> dict[str, Any]:
    try:
      holder = json.loads(self.path.read_text())
    except (OSError, ValueError):
      return {}
    return holder if isinstance(holder, dict) else {}

  def _unreadable_for(self) -> float:
    """Seconds since the (unreadable) lock was last written; 0 when that cannot be told."""
    if paths.url_scheme(self.path) is not None:
      return math.inf  # an object is written whole: one that does not parse never will
    try:
      return max(0.0, time.time() - os.path.getmtime(os.fspath(self.path)))
    except OSError:
      return 0.0

  def _stale_reason(self, holder: dict[str, Any]) -> str | None:
    """Why the holder is gone, or None if it may be running."""
    if not holder:
      # Garbage (a crash while the lock was written, a stray file) names no holder that could be
      # alive; one just created by a starting run reads back within microseconds, so only a lock
      # that stayed unreadable for seconds is taken over.
      age = self._unreadable_for()
      if age <= UNREADABLE_LOCK_SECONDS:
        return None
      return "it does not parse as a lock" + (f" (unchanged for {age:.0f} s)"
                                              if math.isfinite(age) else "")
    numbers = (holder.get("pid"), holder.get("started"), holder.get("heartbeat"))
    if not (all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers)
            and holder["pid"] > 0 and isinstance(holder.get("host"), str)):
      return "it does not parse as a lock (its host, pid, start or heartbeat is missing or wrong)"
    age = time.time() - float(holder.get("heartbeat", 0))
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
      return f"pid {holder.get('pid')} on this host is no longer running"
    if holder.get("host") != socket.gethostname() and age > STALE_SECONDS:
      return f"its last heartbeat was {age:.0f} s ago"
    return None

  def acquire(self) -> None:
    self._started = time.time()
    for _ in range(5):
      if self._create():
        self._held = True
        break
      holder = self._read()
      reason = self._stale_reason(holder)
      if reason is None and not holder:  # being written by a run starting now: look again
        time.sleep(1.0)
        continue
      if reason is None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
        age = time.time() - float(holder.get("heartbeat", 0))
        raise ConfigError(
            f"--workdir {os.fspath(self.path.parent)} is in use by pid {holder.get('pid')} on host "
            f"{holder.get('host')} (since {since}, heartbeat {age:.0f} s ago); wait for that run "
            f"to end or use another --workdir (a crashed run's lock is taken over "
            f"{STALE_SECONDS:.0f} s after its last heartbeat, or at once on its own host)")
      aside = self.path.parent / f"{LOCK_NAME}.stale.{self._token}"
      try:
        self.path.rename(aside)
      except (OSError, FileNotFoundError):
        continue  # another run took it over first; look again
      held_by = f" (pid {holder.get('pid')} on {holder.get('host')})" if holder else ""
      logging.warning("taking over the lock of %s%s: %s", self.path.parent, held_by, reason)
      aside.unlink(missing_ok=True)
    else:
      raise ConfigError(f"{self.path}: could not be taken (another run is starting in "
                        f"{os.fspath(self.path.parent)}, or its lock does not parse and changed "
                        f"in the last {UNREADABLE_LOCK_SECONDS:.0f} s); retry in a minute, or use "
                        "another --workdir")
    self._beat = threading.Thread(target=self._heartbeat, name="workdir-lock", daemon=True)
    self._beat.start()

  def _heartbeat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      try:
        if self._read().get("token") != self._token:
          logging.error("the lock of %s was taken over by another run", self.path.parent)
          return
        temporary = self.path.parent / f"{LOCK_NAME}.{self._token}"
        temporary.write_text(json.dumps(self._record()))
        temporary.replace(self.path)  # atomic on a local disk
      except OSError as error:  # a full disk or a flaky bucket must not stop training
        logging.warning("could not refresh the lock of %s: %s", self.path.parent, error)

  def release(self) -> None:
    self._stop.set()
    if self._beat is not None:
      self._beat.join(timeout=5)
    if self._held and self._read().get("token") == self._token:
      self.path.unlink(missing_ok=True)
    self._held = False

  def __enter__(self) -> "WorkdirLock":
    """Process 0 takes the lock; every process learns whether it did (so all stop together)."""
    problem = None
    if jax.process_index() == 0:
      try:
        self.acquire()
      except ConfigError as error:
        problem = error
    if parallel.any_process(problem is not None):
      raise problem or ConfigError(f"--workdir {os.fspath(self.path.parent)} is in use (process "
                                   "0 says by whom)")
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()
