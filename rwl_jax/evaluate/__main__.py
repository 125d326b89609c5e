"""Evaluate a saved run: `python -m rwl_jax.evaluate --workdir=DIR [--step=N] [--nolinear]
[--finetune]`.

Reads DIR/config.json and a checkpoint (default: the newest readable one), computes the kNN
(at eval.knn_k and each k of eval.knn_k_sweep) and linear-probe top-1 and top-5 on the test
split, and with --finetune the semi-supervised fine-tuning figures (the run's
eval.finetune_fractions, or 1 % and 10 % of the labels when it has none; one process only),
prints them as a table and as JSON (last) and writes DIR/eval_step_N.json (from process 0 only;
add --distributed on a multi-process job). A run on unlabelled images has no evaluation data of
its own: --eval_image_dir=PATH evaluates it on a labelled folder (PATH/train/CLASS/IMAGE).
"""

from __future__ import annotations

import json

import jax
from absl import flags

from rwl_jax import cli, tables
from rwl_jax.evaluate.run import evaluate_checkpoint

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the newest).")
_LINEAR = flags.DEFINE_bool("linear", True, "Also run the linear probe.")
_EVAL_IMAGE_DIR = flags.DEFINE_string(
    "eval_image_dir", "", "Evaluate on this labelled folder (PATH/train/CLASS/IMAGE [+ "
    "PATH/test/CLASS/IMAGE]) instead of the run's evaluation data: for a run on unlabelled images.")
_FINETUNE = flags.DEFINE_bool(
    "finetune", False, "Also fine-tune the encoder on the run's eval.finetune_fractions of the "
    "labels (1% and 10% when it has none) and report finetune_*pct_top1/top5.")


def main():
  results = evaluate_checkpoint(_WORKDIR.value, _STEP.value, _LINEAR.value, _FINETUNE.value,
                                _EVAL_IMAGE_DIR.value)
  if jax.process_index() == 0:
    print(tables.format_table(tables.accuracy_rows(results)))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
  cli.run(main, distributed=True)
