"""Evaluate a saved run: `python -m rwl_jax.evaluate --workdir=DIR [--step=N] [--nolinear]`.

Reads DIR/config.json and a checkpoint (default: the newest), computes the kNN and linear-probe
top-1 on the test split, prints them and writes DIR/eval_step_N.json.
"""

import json
import sys

from absl import flags

from rwl_jax import cli
from rwl_jax.errors import ConfigError
from rwl_jax.evaluate.run import load_run
from rwl_jax.metrics import configure_logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the newest).")
_LINEAR = flags.DEFINE_bool("linear", True, "Also run the linear probe.")


def evaluate_checkpoint(workdir: str, step: int | None = None, linear: bool = True) -> dict:
  run = load_run(workdir, step)
  results = run.evaluate(linear=linear)
  results.update(step=run.step, method=run.config.method)
  (run.workdir / f"eval_step_{run.step}.json").write_text(json.dumps(results, indent=2))
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
  cli.run(main)
