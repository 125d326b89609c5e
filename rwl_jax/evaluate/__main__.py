"""Evaluate a saved run: `python -m rwl_jax.evaluate --workdir=DIR [--step=N] [--nolinear]`.

Reads DIR/config.json and a checkpoint (default: the newest readable one), computes the kNN and
linear-probe top-1 and top-5 on the test split, prints them and writes DIR/eval_step_N.json (from
process 0 only; add --distributed on a multi-process job).
"""

import json

import jax
from absl import flags

from rwl_jax import cli
from rwl_jax.evaluate.run import load_run, write_results

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the newest).")
_LINEAR = flags.DEFINE_bool("linear", True, "Also run the linear probe.")


def evaluate_checkpoint(workdir: str, step: int | None = None, linear: bool = True) -> dict:
  run = load_run(workdir, step)
  results = run.evaluate(linear=linear)
  results.update(step=run.step, method=run.config.method)
  write_results(run, results)
  return results


def main():
  results = evaluate_checkpoint(_WORKDIR.value, _STEP.value, _LINEAR.value)
  if jax.process_index() == 0:
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
  cli.run(main, distributed=True)
