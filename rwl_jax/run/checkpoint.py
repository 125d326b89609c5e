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
from rwl_jax.errors import ConfigError, RunError, first_line, out_of_space


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
  """An Orbax CheckpointManager over workdir/checkpoints, keeping the newest `keep`.

  With `asynchronous` (the default) save() returns once the state is copied to host memory and
  the files are written in the background, so the loop goes on, and may donate the state's
  buffers to the next step, while a save is written. Orbax writes each checkpoint into a
  temporary folder renamed when complete: only complete checkpoints are ever listed or restored.
  A save's failure (a full disk, a lost mount) surfaces at the next save(), wait() or close(),
  as a RunError naming the step and what is kept.
  """

  def __init__(self, workdir: epath.PathLike, *, keep: int = 3, asynchronous: bool = True):
    self.directory = paths.workdir(workdir) / "checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous),
        item_handlers=ocp.StandardCheckpointHandler())
    self._writing: int | None = None  # the step whose save may still be in flight
    self._failed: set[int] = set()  # steps whose save failed: their partial folders go at close

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Starts saving `state` as checkpoint `step` (asynchronous: returns before it is written,
    once the state is copied off the device buffers); waits for the previous save first."""
    self.wait()  # the previous save's failure names its own step
    self._writing = step
    try:
      # force=True: the train loop decides when to save; the manager only keeps the newest ones.
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    except Exception as error:  # pylint: disable=broad-except  # Orbax/TensorStore raise many types
      raise self._save_failed(error) from None

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
    """Returns once the save in flight, if any, is complete and committed; RunError if it
    failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as error:  # pylint: disable=broad-except
      raise self._save_failed(error) from None
    self._writing = None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      try:
        self._manager.close()  # joins Orbax's threads: nothing writes into a partial folder now
      except Exception as error:  # pylint: disable=broad-except
        if not self._failed:  # else Orbax repeats the failure wait() has raised already
          raise self._save_failed(error) from None
      self._remove_partial()
    logging.info("checkpoints in %s: steps %s", self.directory, self.all_steps())

  def _remove_partial(self) -> None:
    """Removes the temporary folders of failed saves (never a listed checkpoint: Orbax commits
    by renaming), giving back the space they took; Orbax replaces any left when it saves that
    step again."""
    if jax.process_index() != 0:
      return
    for step in sorted(self._failed):
      for partial in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
        try:
          partial.rmtree()
        except OSError:
          pass  # still being written to, or a failing disk: retried at close()

  def _save_failed(self, error: Exception) -> RunError:
    """The one-line error for a save that failed (its partial folder is removed)."""
    step, self._writing = self._writing, None
    if step is not None:
      self._failed.add(step)
      self._remove_partial()
    self._manager.reload()  # the failed step is not a checkpoint
    newest = self._manager.latest_step()
    kept = (f"the newest complete checkpoint, step {newest}, is intact" if newest is not None
            else "no checkpoint had been completed yet")
    where = f"{self.directory}/{step}" if step is not None else str(self.directory)
    if out_of_space(error):
      return RunError(f"no space left on the device of {self.directory}: checkpoint {where} could "
                      f"not be written ({kept}); free space there (or move the workdir) and "
                      "rerun the same command to resume")
    return RunError(f"checkpoint {where} could not be written ({_first_line(error)}); {kept}, "
                    "rerun the same command to resume")


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
