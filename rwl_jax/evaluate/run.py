"""A finished or running training run, loaded back from its workdir: config, data and state.

  run = load_run("runs/rwl")            # the newest checkpoint
  features, labels = run.features("test")

  results = evaluate_checkpoint("runs/rwl")   # what `python -m rwl_jax.evaluate` prints

Used by `python -m rwl_jax.evaluate` and the Colab notebook's representation plot. The run is
rebuilt through the same experiment builder as training, so it restores into the same state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from rwl_jax.run import experiment as experiment_lib
from rwl_jax import compilation, parallel, paths
from rwl_jax.run import metrics
from rwl_jax.run import workdir as workdir_lib
from rwl_jax.run.checkpoint import CheckpointDamaged, Checkpointer
from rwl_jax.data import inputs
from rwl_jax.errors import ConfigError
from rwl_jax.evaluate.evaluators import (DEFAULT_FINETUNE_FRACTIONS, FeatureExtractor,
                                         build_evaluators, finetune_evaluator, run_evaluators)
from rwl_jax.run.step import TrainState


@dataclasses.dataclass
class Run:
  """What a workdir holds, restored at one checkpoint step."""

  workdir: epath.Path
  step: int
  config: ml_collections.ConfigDict
  data: inputs.ProcessData
  experiment: experiment_lib.Experiment
  state: TrainState

  @property
  def extractor(self) -> FeatureExtractor:
    return FeatureExtractor(self.experiment, self.data)

  def evaluate(self, linear: bool = True, finetune: bool = False) -> dict[str, float]:
    """kNN (and linear-probe) top-1 and top-5 on the test split, from frozen encoder features;
    with finetune, also fine-tuning on the run's eval.finetune_fractions of the labels, or 1 %
    and 10 % (DEFAULT_FINETUNE_FRACTIONS) when it has none. Without it nothing is fine-tuned."""
    if not self.data.evaluates:
      raise ConfigError(f"{self.workdir} has no labelled evaluation data "
                        f"({self.data.evaluation_off}); evaluate its checkpoint on a labelled "
                        "folder with --eval_image_dir=PATH (PATH/train/CLASS/IMAGE)")
    num_classes = len(self.data.class_names)
    evaluation = self.config.eval.copy_and_resolve_references()
    fractions = tuple(evaluation.finetune_fractions) or DEFAULT_FINETUNE_FRACTIONS
    evaluation.finetune_fractions = ()  # fine-tuning only when asked for, below
    evaluators = [e for e in build_evaluators(evaluation, num_classes=num_classes,
                                              seed=self.experiment.seed)
                  if linear or e.name != "linear"]
    if finetune:
      evaluators.append(finetune_evaluator(evaluation, num_classes, self.experiment, self.data,
                                           fractions))
    return run_evaluators(evaluators, self.extractor, self.state)

  def features(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """([N, D] frozen encoder features, [N] labels) of the 'train' or 'test' split."""
    if split not in ("train", "test"):
      raise ConfigError(f"features are for the 'train' and 'test' splits, got {split!r}")
    return self.extractor.split(self.state, split)


def load_run(workdir: epath.PathLike, step: int | None = None, eval_image_dir: str = "") -> Run:
  """Reads workdir/config.json and restores checkpoint `step` (default: the newest readable);
  eval_image_dir, if given, replaces the run's data.eval_image_dir (a labelled folder to
  evaluate on, e.g. for a run trained on unlabelled images)."""
  workdir = paths.workdir(workdir)
  config = workdir_lib.read_config(workdir)
  if eval_image_dir:
    config.data.eval_image_dir = eval_image_dir
  compilation.use_cache(config.compilation_cache_dir)  # before anything compiles, as in training
  data = inputs.load_data(config.data, train_labels=config.eval.online_probe)
  experiment = experiment_lib.build(
      config, parallel.make_mesh(),
      steps_per_epoch=data.steps_per_epoch(config.global_batch_size),
      num_classes=len(data.class_names))
  step, state = restore_checkpoint(workdir, config, experiment, step)
  return Run(workdir, step, config, data, experiment, state)


def restore_checkpoint(workdir: epath.Path, config: ml_collections.ConfigDict, experiment,
                       step: int | None = None) -> tuple[int, Any]:
  """(step, state) of checkpoint `step` of the run in workdir (default: the newest readable, a
  damaged one set aside) in the structure of experiment's state."""
  checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    if step is None:
      step, state = checkpointer.restore_newest_readable(experiment.init_state())
      if step is None:
        raise ConfigError(f"no checkpoint in {checkpointer.directory}: the run has not saved one "
                          "yet")
    else:
      steps = checkpointer.all_steps()
      if step not in steps:
        raise ConfigError(f"no checkpoint at step {step} in {checkpointer.directory} "
                          f"(have {steps})")
      try:
        state = checkpointer.restore(step, experiment.init_state())
      except CheckpointDamaged as damaged:  # asked for by --step: not set aside, not replaced
        raise CheckpointDamaged(f"{damaged}; use another --step (have {steps}), or leave "
                                "it out to use the newest that reads back") from None
  finally:
    checkpointer.close()
  return step, state


def write_results(run: Run, results: dict) -> epath.Path:
  """Writes run.workdir/eval_step_N.json from process 0 only; returns its path."""
  path = run.workdir / f"eval_step_{run.step}.json"
  if jax.process_index() == 0:
    metrics.write_results(results, path)
  return path


def evaluate_checkpoint(workdir: epath.PathLike, step: int | None = None, linear: bool = True,
                        finetune: bool = False, eval_image_dir: str = "") -> dict:
  """What `python -m rwl_jax.evaluate` computes and writes: load_run, then every evaluation of
  the run's config (the linear probe unless linear=False, fine-tuning if finetune), with the step
  and method added, written to workdir/eval_step_N.json; returns the results."""
  run = load_run(workdir, step, eval_image_dir)
  results = run.evaluate(linear=linear, finetune=finetune)
  results.update(step=run.step, method=run.experiment.method.name)
  write_results(run, results)
  return results
