"""Where a training run reads its config: the walk of `config` from train.train_and_evaluate.

    python tests/config_walk.py          # a tiny real run on CPU; prints the walk and its counts

Measured, not read off the source: every field read of the run's ConfigDict or of one of its
sections (attribute or item access, get, iteration, `in`) while train_and_evaluate runs is
recorded with the Python stack that made it. Then

- a *place* is a function of the library (file, qualified name) that reads a field itself or is
  handed the config or one of its sections as an argument (the config passes through it);
- the *walk* is the sequence of places in the order they read, a place repeated only when it
  reads again after another place did;
- a *climb* is a step of the walk to a place that is a caller of the previous one (still on its
  stack): the config went down into a function, came back, and the caller reads it again. Climbs
  are counted once per (from, to) pair of places, so a hook reading on every step counts once.

A copy (to_dict, to_json) reads every field through ConfigDict's own methods: it counts as one
read by the library function that asks for the copy.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import sys
import threading
import types

import ml_collections

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "rwl_jax"
_ML_COLLECTIONS = pathlib.Path(ml_collections.__file__).resolve().parent
_READS = ("__getattr__", "__getitem__", "get", "items", "keys", "values", "__iter__",
          "__contains__", "to_dict", "to_json", "to_json_best_effort")


@dataclasses.dataclass(frozen=True)
class Place:
  file: str  # relative to the package
  function: str

  def __str__(self) -> str:
    return f"{self.file}:{self.function}"


@dataclasses.dataclass
class Walk:
  """The places in reading order (see the module docstring) and the climbs between them."""

  steps: list[Place]
  climbs: list[tuple[Place, Place]]

  @property
  def places(self) -> list[Place]:
    return list(dict.fromkeys(self.steps))

  @property
  def files(self) -> list[str]:
    return list(dict.fromkeys(place.file for place in self.steps))

  def report(self) -> str:
    lines = [f"{len(self.places)} places ({len(self.steps)} visits) in {len(self.files)} files, "
             f"{len(self.climbs)} climbs back up", "", "walk:"]
    lines += [f"  {place}" for place in self.steps]
    lines += ["", "climbs (from -> back up to):"]
    lines += [f"  {low} -> {high}" for low, high in self.climbs]
    return "\n".join(lines)


def _library_stack(frame: types.FrameType, serials: dict[int, int]) -> list[tuple[Place, int]]:
  """The library's frames on the stack, innermost first: (place, serial number of the call)."""
  stack = []
  while frame is not None:
    path = pathlib.Path(frame.f_code.co_filename).resolve()
    if path.is_relative_to(PACKAGE):
      name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
      stack.append((Place(str(path.relative_to(PACKAGE)), name),
                    serials.get(id(frame), id(frame))))
    frame = frame.f_back
  return stack


class ConfigReads:
  """While entered, records every read of `config` (and its sections) with the reader's stack."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._watched = set()
    self._watch(config)
    self.reads: list[list[tuple[Place, int]]] = []  # per read: the library's stack, innermost first
    self._lock = threading.Lock()
    self._originals = {}

  def _watch(self, config) -> None:
    self._watched.add(id(config))
    for value in config._fields.values():  # pylint: disable=protected-access
      if isinstance(value, ml_collections.ConfigDict):
        self._watch(value)

  def _wrap(self, name):
    original = getattr(ml_collections.ConfigDict, name)
    recorder = self

    def read(self, *args, **kwargs):
      if id(self) in recorder._watched and not getattr(recorder._inside, "active", False):
        frame = sys._getframe(1)  # pylint: disable=protected-access
        if not pathlib.Path(frame.f_code.co_filename).resolve().is_relative_to(_ML_COLLECTIONS):
          stack = _library_stack(frame, recorder._serials)
          if stack:
            with recorder._lock:
              recorder.reads.append(stack)
      recorder._inside.active = getattr(recorder._inside, "active", False) or name.startswith("to_")
      try:
        return original(self, *args, **kwargs)
      finally:
        if name.startswith("to_"):
          recorder._inside.active = False

    return original, read

  def _on_call(self, frame, event, arg):
    """Profile hook: a library function called with the config or a section as an argument."""
    del arg
    if not frame.f_code.co_filename.startswith(self._package):
      return
    if event == "return":  # a frame's id is reused once it is gone: calls get serial numbers
      self._serials.pop(id(frame), None)
    if event != "call":
      return
    self._serials[id(frame)] = next(self._calls)
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount
    values = frame.f_locals
    if any(id(values.get(name)) in self._watched for name in code.co_varnames[:count]):
      stack = _library_stack(frame, self._serials)
      with self._lock:
        self.reads.append(stack)

  def __enter__(self) -> "ConfigReads":
    self._package = str(PACKAGE)
    self._serials, self._calls = {}, itertools.count()
    self._inside = threading.local()
    self._profiles = (sys.getprofile(), threading.getprofile())
    sys.setprofile(self._on_call)
    threading.setprofile(self._on_call)
    for name in _READS:
      self._originals[name], replacement = self._wrap(name)
      setattr(ml_collections.ConfigDict, name, replacement)
    return self

  def __exit__(self, *exc_info) -> None:
    sys.setprofile(self._profiles[0])
    threading.setprofile(self._profiles[1])
    for name, original in self._originals.items():
      setattr(ml_collections.ConfigDict, name, original)

  def walk(self) -> Walk:
    steps, climbs = [], {}
    previous = None  # the stack of the previous read
    for stack in self.reads:
      place, frame = stack[0]
      if previous is not None and previous[0][1] == frame:
        continue  # the same call of the same function reading on
      if previous is not None and frame in {f for _, f in previous[1:]}:
        climbs.setdefault((previous[0][0], place), None)
      if not steps or steps[-1] != place:
        steps.append(place)
      previous = stack
    return Walk(steps=steps, climbs=list(climbs))


def tiny_run_walk(image_dir: pathlib.Path, workdir: pathlib.Path,
                  cache_dir: pathlib.Path) -> Walk:
  """The walk of a tiny real run (tests' tiny config: 2 epochs on image_dir, probe diagnostics,
  checkpoints, kNN and the linear probe at the end)."""
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from rwl_jax import train  # pylint: disable=g-import-not-at-top

  config = tiny_config(image_dir, cache_dir)
  config.eval.knn_every_epochs = 1  # the periodic evaluation hook reads too
  with ConfigReads(config) as reads:
    train.train_and_evaluate(config, workdir)
  return reads.walk()


if __name__ == "__main__":
  import os
  import tempfile

  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
  from conftest import unpack_cifar_subset  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as temporary:
    root = pathlib.Path(temporary)
    images = unpack_cifar_subset(root / "cifar", {"train": 8, "test": 4})
    print(tiny_run_walk(images, root / "workdir", root / "cache").report())
