"""Orbax checkpointing of the train state, with resume and a clear error on mismatch."""

from __future__ import annotations

import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from absl import logging
from etils import epath

from rwl_jax import parallel, paths
from rwl_jax.errors import ConfigError, RunError, first_line


class CheckpointDamaged(RunError):
  """A checkpoint whose files cannot be read back (lost, cut short): damage, not a mismatch."""


_SET_ASIDE = re.compile(r"\d+\.unreadable(\.\d+)?")


def set_aside_checkpoints(directory: epath.Path) -> list[str]:
  """The names of the checkpoints in `directory` set aside as unreadable (STEP.unreadable)."""
  if not directory.is_dir():
    return []
  return sorted((p.name for p in directory.iterdir() if _SET_ASIDE.fullmatch(p.name)),
                key=lambda name: (int(name.split(".")[0]), name), reverse=True)


def none_readable(directory: epath.Path, aside: list[str]) -> CheckpointDamaged:
  """The error of a run whose every checkpoint was set aside as unreadable."""
  return CheckpointDamaged(
      f"{directory}: no checkpoint reads back ({', '.join(aside)} set aside as damaged); train "
      f"again in a new --workdir, or move them out of {directory} to train this run from scratch")


def _first_line(error: Exception) -> str:
  return first_line(error)[:200]  # TensorStore's first lines can hold a whole spec


class Checkpointer:
  """An Orbax CheckpointManager over workdir/checkpoints, keeping the newest `keep`."""

  def __init__(self, workdir: epath.PathLike, *, keep: int = 3):
    self.directory = paths.workdir(workdir) / "checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    # force=True: the train loop decides when to save; the manager only keeps the newest ones.
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def saved_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """{'params/...': shape} of what checkpoint `step` holds, read from its metadata alone
    ({} when that cannot be read)."""
    try:
      return _shapes_by_path(self._manager.item_metadata(step) or {})
    except Exception:  # pylint: disable=broad-except  # damaged: restore() says how
      return {}

  def restore(self, step: int, target: Any) -> Any:
    """Restores step into the structure, shapes, dtypes and shardings of `target`.

    `target` may hold arrays or jax.ShapeDtypeStruct leaves (with .sharding).
    Raises ConfigError when the checkpoint holds another model (readable, other shapes) and
    CheckpointDamaged when its files cannot be read.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      metadata = self._manager.item_metadata(step)
    except Exception as error:  # Orbax/TensorStore raise many types for unreadable data.
      raise CheckpointDamaged(f"checkpoint {self.directory}/{step} is damaged: its metadata "
                              f"cannot be read ({_first_line(error)})") from None
    if not metadata:  # the metadata file is gone: nothing says what the checkpoint holds
      raise CheckpointDamaged(f"checkpoint {self.directory}/{step} is damaged: its metadata "
                              "file is missing")
    # Compare shapes first: a failed Orbax restore leaves asyncio tracebacks behind at exit.
    mismatch = _first_mismatch(_shapes_by_path(metadata), _shapes_by_path(abstract))
    if mismatch:
      raise ConfigError(f"checkpoint {self.directory}/{step} does not match this config "
                        f"({mismatch}); use a new --workdir or the config it was trained with")
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as error:  # pylint: disable=broad-except
      raise CheckpointDamaged(f"checkpoint {self.directory}/{step} is damaged: "
                              f"{_first_line(error)}") from None

  def restore_newest_readable(self, target: Any) -> tuple[int | None, Any]:
    """(step, state) from the newest checkpoint that reads back; (None, target) if there is none,
    and CheckpointDamaged if there are only checkpoints set aside as unreadable.

    A damaged newest checkpoint (a file lost or cut short on a failing disk) gets a warning and
    the previous one is used, so a crash during saving never costs more than one interval.
    A checkpoint of another model is still an error: falling back past it would hide it.
    On several processes, every process must use the same step: each one's outcome is shared
    (all-gathered) after every attempt, and all fall back together if any of them failed.
    """
    for step in sorted(self.all_steps(), reverse=True):
      problem, restored = None, None
      try:
        restored = self.restore(step, target)
      except ConfigError:  # another model: the same on every process, and not damage
        raise
      except Exception as error:  # pylint: disable=broad-except  # CheckpointDamaged and the like
        problem = _first_line(error)
      if not parallel.any_process(problem is not None):
        return step, restored
      kept = "set aside by process 0"
      if jax.process_index() == 0:
        # Set aside, not deleted: the run will save this step again, and the bytes may matter.
        kept = f"kept as {paths.set_aside(self.directory / str(step)).name}"
      logging.warning("checkpoint %s/%d is unreadable (%s); %s, trying the previous one",
                      self.directory, step, problem or "on another process", kept)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
      self._manager.reload()
    # Every checkpoint damaged: starting over would throw the run's history away unasked.
    aside = set_aside_checkpoints(self.directory)
    if aside:
      raise none_readable(self.directory, aside)
    return None, target

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
    logging.info("checkpoints in %s: steps %s", self.directory, self.all_steps())


def _path_name(entry: Any) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(entry, attribute):
      return str(getattr(entry, attribute))
  return str(entry)


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_path_name(e) for e in path): tuple(leaf.shape) for path, leaf in leaves}


def _first_mismatch(saved: dict[str, tuple[int, ...]], wanted: dict[str, tuple[int, ...]]) -> str:
  for path, shape in wanted.items():
    if path not in saved:
      return f"{path} is missing from the checkpoint"
    if saved[path] != shape:
      return f"{path} has shape {saved[path]} in the checkpoint, {shape} in this config"
  extra = sorted(set(saved) - set(wanted))
  return f"the checkpoint has {extra[0]}, which this config lacks" if extra else ""
