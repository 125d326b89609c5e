"""A finished or running training run, loaded back from its workdir: config, data and state.

  run = load_run("runs/rwl")            # the newest checkpoint
  features, labels = run.features("test")

Used by `python -m rwl_jax.evaluate` and the Colab notebook's representation plot.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import ml_collections
import numpy as np
from etils import epath

from rwl_jax import parallel, paths, train
from rwl_jax.checkpoint import Checkpointer
from rwl_jax.errors import ConfigError


@dataclasses.dataclass
class Run:
  """What a workdir holds, restored at one checkpoint step."""

  workdir: epath.Path
  step: int
  config: ml_collections.ConfigDict
  data: train.ProcessData
  mesh: jax.sharding.Mesh
  defs: train.ModelDefs
  state: train.TrainState

  def evaluate(self, linear: bool = True) -> dict[str, float]:
    return train.evaluate(self.config, self.defs, self.state, self.data, self.mesh, linear=linear)

  def features(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """([N, D] frozen encoder features, [N] labels) of the 'train' or 'test' split."""
    return train.encoder_features(self.config, self.defs, self.state, self.data, self.mesh,
                                  (split,))[split]


def load_run(workdir: epath.PathLike, step: int | None = None) -> Run:
  """Reads workdir/config.json and restores checkpoint `step` (default: the newest)."""
  workdir = paths.workdir(workdir)
  config_path = workdir / "config.json"
  if not config_path.is_file():
    raise ConfigError(f"{config_path} not found: --workdir must be a directory a training run wrote")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  data = train.load_data(config)
  mesh = parallel.make_mesh()
  tx, _ = train.create_optimizer(
      config, max(1, data.train_shards.steps_per_epoch(config.global_batch_size)))
  defs, state = train.create_train_state(config, tx, mesh)
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    steps = checkpointer.all_steps()
    step = checkpointer.latest_step() if step is None else step
    if step is None or step not in steps:
      raise ConfigError(f"no checkpoint at step {step} in {checkpointer.directory} (have {steps})")
    state = checkpointer.restore(step, state)
  finally:
    checkpointer.close()
  return Run(workdir, step, config, data, mesh, defs, state)
