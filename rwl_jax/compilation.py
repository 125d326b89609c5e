"""JAX's persistent compilation cache for a run, and a count of what a process compiled.

    compilation.use_cache(config.compilation_cache_dir)   # before anything compiles
    with compilation.CompileLog() as log:                  # every compilation JAX requests
      ...
    log.compiled()      # [(function name, seconds)] that XLA compiled (persistent-cache misses)
    log.loaded()        # [(function name, seconds)] that came from the persistent cache

JAX reports each executable it needs (an in-memory cache miss: a new function, shape or static
argument) as a '/jax/core/compile/backend_compile_duration' event named after the function, and,
inside it, '/jax/compilation_cache/cache_hits' when the persistent cache served it. A request
without a hit was compiled by XLA. The log pairs the two on the requesting thread.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Callable

import jax
from absl import logging
from etils import epath
from jax.experimental.compilation_cache import compilation_cache as cache

from rwl_jax import paths
from rwl_jax.configs.common import DEFAULT_COMPILATION_CACHE_DIR
from rwl_jax.errors import ConfigError

OFF = ("", "off")
ENVIRONMENT_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def cache_directory(value: str) -> str | None:
  """The cache directory a config's compilation_cache_dir asks for (None: no cache).

  Precedence: '' or 'off' turns the cache off; any other value than the default is used as
  given; the default gives way to the environment variable JAX_COMPILATION_CACHE_DIR when that is
  set (JAX's own variable: a machine's or a test suite's choice), else it is used.
  """
  if value.strip().lower() in OFF:
    return None
  if value == DEFAULT_COMPILATION_CACHE_DIR and os.environ.get(ENVIRONMENT_VARIABLE):
    value = os.environ[ENVIRONMENT_VARIABLE]
  return os.fspath(paths.as_path(value, "compilation_cache_dir"))


# JAX's thresholds for writing an entry skip programs compiled in under a second (the evaluation
# functions, the eager ops): cached too, a rerun's start-up is loading only. Unless the
# environment sets them (JAX reads these variables itself).
_THRESHOLDS = {"jax_persistent_cache_min_compile_time_secs": 0.0,
               "jax_persistent_cache_min_entry_size_bytes": -1}  # -1: no floor, no override


def use_cache(value: str) -> str | None:
  """Points JAX's persistent compilation cache at cache_directory(value), or turns it off, before
  anything compiles (JAX opens the cache at the first compilation after this); returns the
  directory. Called again with another directory, the process switches to it."""
  directory = cache_directory(value)
  if directory is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  if not paths.url_scheme(directory):
    try:
      epath.Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as error:
      raise ConfigError(f"compilation_cache_dir {directory!r} cannot be made: "
                        f"{error.strerror or error}") from None
  switched = (jax.config.jax_compilation_cache_dir != directory
              or not jax.config.jax_enable_compilation_cache)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", directory)
  if switched:  # JAX keeps the cache it opened first; reopened at the next compilation
    cache.reset_cache()
  for name, setting in _THRESHOLDS.items():
    if name.upper() not in os.environ:
      jax.config.update(name, setting)
  logging.info("persistent compilation cache: %s", directory)
  return directory


@dataclasses.dataclass(frozen=True)
class Compilation:
  name: str  # the jitted function's name (JAX's fun_name, e.g. 'jit_features')
  seconds: float  # time to get the executable: XLA compilation or the cache's load
  from_cache: bool  # served by the persistent compilation cache
  at: float  # time.perf_counter() when it ended


_OPEN_LOGS: list["CompileLog"] = []  # the logs open now, which JAX's events reach
_LISTENERS_REGISTERED = threading.Event()  # set once for the process
_LISTENING_LOCK = threading.Lock()


def _to_open_logs(method: str) -> Callable[..., None]:
  """A JAX monitoring listener that hands each event to every open CompileLog's `method`."""

  def listener(*args, **kwargs) -> None:
    for log in list(_OPEN_LOGS):
      getattr(log, method)(*args, **kwargs)

  return listener


class CompileLog:
  """Records every executable JAX requests while open (see the module docstring); thread-safe."""

  def __init__(self):
    self.compilations: list[Compilation] = []
    self._local = threading.local()
    self._lock = threading.Lock()

  def _on_event(self, event: str, **kwargs) -> None:
    del kwargs
    if event == CACHE_HIT_EVENT:
      self._local.hit = True

  def _on_duration(self, event: str, duration: float, **kwargs) -> None:
    if event != BACKEND_COMPILE_EVENT:
      return
    hit, self._local.hit = getattr(self._local, "hit", False), False
    with self._lock:
      self.compilations.append(Compilation(str(kwargs.get("fun_name", "?")), float(duration),
                                           hit, time.perf_counter()))

  def __enter__(self) -> "CompileLog":
    with _LISTENING_LOCK:
      if not _LISTENERS_REGISTERED.is_set():
        # Registered once per process: jax before 0.8 cannot unregister a listener.
        jax.monitoring.register_event_listener(_to_open_logs("_on_event"))
        jax.monitoring.register_event_duration_secs_listener(_to_open_logs("_on_duration"))
        _LISTENERS_REGISTERED.set()
      _OPEN_LOGS.append(self)
    return self

  def __exit__(self, *exc_info) -> None:
    with _LISTENING_LOCK:
      _OPEN_LOGS.remove(self)

  def compiled(self, since: float = float("-inf")) -> list[tuple[str, float]]:
    """(name, seconds) of each executable XLA compiled (ended after `since`)."""
    return [(c.name, c.seconds) for c in self.compilations if not c.from_cache and c.at > since]

  def loaded(self, since: float = float("-inf")) -> list[tuple[str, float]]:
    """(name, seconds) of each executable loaded from the persistent cache."""
    return [(c.name, c.seconds) for c in self.compilations if c.from_cache and c.at > since]

  def summary(self) -> dict[str, float]:
    """programs_compiled / programs_loaded (from the persistent cache) and their seconds."""
    compiled, loaded = self.compiled(), self.loaded()
    return {"programs_compiled": len(compiled),
            "programs_compiled_seconds": sum(seconds for _, seconds in compiled),
            "programs_loaded": len(loaded),
            "programs_loaded_seconds": sum(seconds for _, seconds in loaded)}
