"""Evaluate a saved run: `python -m rwl_jax.evaluate --workdir=DIR [--step=N] [--nolinear]`.

Reads DIR/config.json and a checkpoint (default: the newest), computes the kNN and linear-probe
top-1 on the test split, prints them and writes DIR/eval_step_N.json.
"""

import json
import pathlib
import sys

import ml_collections
from absl import app, flags

from rwl_jax import parallel, train
from rwl_jax.checkpoint import Checkpointer
from rwl_jax.errors import ConfigError
from rwl_jax.metrics import configure_logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the newest).")
_LINEAR = flags.DEFINE_bool("linear", True, "Also run the linear probe.")


def evaluate_checkpoint(workdir: str, step: int | None = None, linear: bool = True) -> dict:
  workdir_path = pathlib.Path(workdir).expanduser()
  config_path = workdir_path / "config.json"
  if not config_path.is_file():
    raise ConfigError(f"{config_path} not found: --workdir must be a directory a training run wrote")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  train_split, test_split = train.load_data(config)
  mesh = parallel.make_mesh()
  tx, _ = train.create_optimizer(config, max(1, len(train_split) // config.global_batch_size))
  defs, state = train.create_train_state(config, tx, mesh)
  checkpointer = Checkpointer(workdir_path, keep=config.keep_checkpoints)
  steps = checkpointer.all_steps()
  if step is None:
    step = checkpointer.latest_step()
  if step is None or step not in steps:
    raise ConfigError(f"no checkpoint at step {step} in {checkpointer.directory} (have {steps})")
  state = checkpointer.restore(step, state)
  checkpointer.close()
  results = train.evaluate(config, defs, state, train_split, test_split, mesh, linear=linear)
  results.update(step=step, method=config.method)
  (workdir_path / f"eval_step_{step}.json").write_text(json.dumps(results, indent=2))
  return results


def main(argv):
  del argv
  configure_logging()
  try:
    print(json.dumps(evaluate_checkpoint(_WORKDIR.value, _STEP.value, _LINEAR.value), indent=2))
  except ConfigError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
