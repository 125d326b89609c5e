"""Orbax checkpointing of the train state, with resume and a clear error on mismatch."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from rwl_jax.errors import ConfigError


class Checkpointer:
  """An Orbax CheckpointManager over workdir/checkpoints, keeping the newest `keep`."""

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3):
    self.directory = pathlib.Path(workdir).resolve() / "checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    # force=True: the train loop decides when to save; the manager only keeps the newest ones.
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, step: int, target: Any) -> Any:
    """Restores step into the structure, shapes, dtypes and shardings of `target`.

    `target` may hold arrays or jax.ShapeDtypeStruct leaves (with .sharding).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError) as error:
      first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
      raise ConfigError(f"checkpoint {self.directory}/{step} does not match this config "
                        f"({first_line[:200]}); use a new --workdir or the config it was trained "
                        "with") from error

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
    logging.info("checkpoints in %s: steps %s", self.directory, self.all_steps())
