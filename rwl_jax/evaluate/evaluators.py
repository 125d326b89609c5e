"""Evaluators built from a config, each with its own schedule, sharing one compiled feature function.

    features = FeatureExtractor(experiment, data)       # the experiment's jitted feature function
    for evaluator in build_evaluators(config, num_classes):
      scalars = evaluator(features.of(state), state)     # {'knn_top1': ..., 'knn_top5': ...}

The features of a state are extracted once and shared by every evaluator due at that moment, and
the feature function is compiled once per run (not once per evaluation). The fine-tuning
evaluator (eval.finetune_fractions) ignores the features: it is built with the experiment and the
labelled splits and trains a copy of the state's encoder on images.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np

from rwl_jax import online_probe, parallel
from rwl_jax.data import order, sources
from rwl_jax.errors import ConfigError
from rwl_jax.evaluate import finetune
from rwl_jax.evaluate.knn import knn_sweep
from rwl_jax.evaluate.linear_probe import linear_probe_accuracy


def round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class SplitFeatures:
  """Frozen encoder features of the train and test splits, each in split order, with labels."""

  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]


class FeatureExtractor:
  """Features of a whole split, computed on the mesh from this process's examples (uint8 in,
  float32 out) with the experiment's one jitted feature function."""

  def __init__(self, experiment, data):
    self._experiment = experiment
    self._data = data
    self._batch_size = round_up(experiment.config.eval.batch_size, experiment.mesh.devices.size)

  def split(self, state, name: str) -> tuple[np.ndarray, np.ndarray]:
    """([N, D] features, [N] labels) of every example of split 'train' (the evaluation's: the
    kNN bank and linear-probe training split, data.eval_train) or 'test', in split order."""
    if not self._data.evaluates:
      raise ConfigError(f"no labelled evaluation data: {self._data.evaluation_off}")
    held = {"train": (self._data.eval_train, self._data.eval_train_shards),
            "test": (self._data.test, self._data.test_shards)}
    local_split, shards = held[name]
    return extract(self._experiment.features, state.params, state.batch_stats, local_split,
                   shards, self._batch_size, self._experiment.mesh)

  def of(self, state) -> SplitFeatures:
    return SplitFeatures(train=self.split(state, "train"), test=self.split(state, "test"))


def extract(feature_fn, params, batch_stats, local_split: sources.ArraySplit,
            shards: order.DataShards, batch_size: int,
            mesh: jax.sharding.Mesh) -> tuple[np.ndarray, np.ndarray]:
  """([N, D] features, [N] labels) of every example of the split, in the split's order.

  Each process feeds the examples it holds (local_split, its shards.process_range()); the rows
  come back from all processes with their labels and positions in the split, and are put back
  in split order, so the result does not depend on the number of processes. batch_size must
  divide over the mesh.
  """
  parallel.check_batch_divisible(batch_size, mesh, "eval.batch_size")
  local = batch_size // jax.process_count()
  num_batches = -(-shards.max_process_examples // local)  # the same count on every process
  start, _ = shards.process_range()
  outputs = []
  for batch in sources.eval_batches(local_split, local, num_batches):
    rows = {"label": batch["label"], "mask": batch["mask"], "position": batch["index"] + start}
    outputs.append(feature_fn(params, batch_stats,
                              *parallel.to_global((batch["image"], rows), mesh)))
  fetched = parallel.fetch(outputs)
  features = np.concatenate([f for f, _ in fetched])
  rows = {name: np.concatenate([r[name] for _, r in fetched]) for name in fetched[0][1]}
  real = rows["mask"]
  in_split_order = np.argsort(rows["position"][real], kind="stable")
  return features[real][in_split_order], rows["label"][real][in_split_order]


class Evaluator(Protocol):
  name: str
  every_epochs: int  # 0 = only at the end of the run

  def __call__(self, features: SplitFeatures, state) -> dict[str, float]:
    ...


@dataclasses.dataclass(frozen=True)
class KnnEvaluator:
  """Weighted kNN (k, temperature) on the frozen features: knn_top1, knn_top5, and for each k of
  k_sweep knn_top1_k{k}, knn_top5_k{k}, all from one neighbour search (knn.knn_sweep)."""

  num_classes: int
  k: int
  temperature: float
  every_epochs: int = 0
  k_sweep: tuple[int, ...] = ()
  name: str = "knn"

  def __call__(self, features: SplitFeatures, state=None) -> dict[str, float]:
    sweep = knn_sweep(*features.train, *features.test, num_classes=self.num_classes,
                      ks=(self.k,) + tuple(self.k_sweep), temperature=self.temperature)
    results = {f"knn_{key}": value for key, value in sweep[self.k].items()}
    for k in self.k_sweep:
      results.update({f"knn_{key}_k{k}": value for key, value in sweep[k].items()})
    return results


@dataclasses.dataclass(frozen=True)
class LinearProbeEvaluator:
  """A softmax regression trained from scratch on the frozen features: linear_top1, linear_top5."""

  num_classes: int
  epochs: int
  batch_size: int
  learning_rate: float
  weight_decay: float
  seed: int
  every_epochs: int = 0
  name: str = "linear"

  def __call__(self, features: SplitFeatures, state=None) -> dict[str, float]:
    accuracy = linear_probe_accuracy(
        *features.train, *features.test, num_classes=self.num_classes, epochs=self.epochs,
        batch_size=self.batch_size, learning_rate=self.learning_rate,
        weight_decay=self.weight_decay, seed=self.seed)
    return {f"linear_{key}": value for key, value in accuracy.items()}


@jax.jit
def _online_correct(probe_params, features, labels):
  return online_probe.top_k_correct(online_probe.logits(probe_params, features), labels, k=5)


@dataclasses.dataclass(frozen=True)
class OnlineProbeEvaluator:
  """The state's online linear probe (trained in the step) on the test split's frozen features:
  online_top1, online_top5. Nothing is trained here."""

  every_epochs: int = 0
  name: str = "online"

  def __call__(self, features: SplitFeatures, state) -> dict[str, float]:
    test_features, test_labels = features.test
    top1, top5 = _online_correct(parallel.fetch(state.probe_params), test_features,
                                 test_labels.astype(np.int32))
    return {"online_top1": float(top1) / len(test_labels),
            "online_top5": float(top5) / len(test_labels)}


DEFAULT_FINETUNE_FRACTIONS = (0.01, 0.1)  # SimCLR's 1 % and 10 % of the labels


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class FinetuneEvaluator:
  """Semi-supervised fine-tuning (evaluate/finetune.py) of the state's encoder on each fraction
  of the labelled train split: finetune_{1pct,10pct,...}_top1 / _top5 on the eval split.

  Unlike the other evaluators it reads images, not frozen features: it is built with the
  experiment (graph definitions, mesh, recipe) and the labelled train and eval splits, and takes
  the encoder's parameters from the state it is called with. Only at the end of a run.
  """

  experiment: Any = dataclasses.field(repr=False)
  train: sources.ArraySplit = dataclasses.field(repr=False)
  test: sources.ArraySplit = dataclasses.field(repr=False)
  num_classes: int
  fractions: tuple[float, ...]
  epochs: int
  batch_size: int
  learning_rate: float
  seed: int
  every_epochs: int = 0
  name: str = "finetune"

  def __post_init__(self):
    # Refused when built (before training), not after the run.
    if jax.process_count() > 1:
      raise ConfigError("eval.finetune_fractions needs the whole labelled split on one process; "
                        "set it to () here and run `python -m rwl_jax.evaluate --workdir=DIR "
                        "--finetune` on one process")

  def __call__(self, features: SplitFeatures | None, state) -> dict[str, float]:
    encoder = finetune.Encoder.of_run(self.experiment.defs, state.params, state.batch_stats)
    config = self.experiment.config
    results = {}
    for fraction in self.fractions:
      accuracy = finetune.finetune_accuracy(
          encoder, self.train, self.test, fraction=fraction, num_classes=self.num_classes,
          epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
          seed=self.seed, recipe=self.experiment.recipe, image_size=config.data.image_size,
          mesh=self.experiment.mesh, eval_batch_size=config.eval.batch_size)
      name = finetune.fraction_name(fraction)
      results.update({f"finetune_{name}_{key}": value for key, value in accuracy.items()})
    return results


def finetune_evaluator(config: ml_collections.ConfigDict, num_classes: int, experiment, data,
                       fractions: tuple[float, ...] | None = None) -> FinetuneEvaluator:
  """The config's FinetuneEvaluator on data's labelled splits: the evaluation's training split
  (data.eval_train, the kNN bank: the training split unless another labelled one is named) and
  data.test (fractions: default the config's eval.finetune_fractions)."""
  evaluation = config.eval
  return FinetuneEvaluator(
      experiment=experiment, train=data.eval_train, test=data.test, num_classes=num_classes,
      fractions=tuple(float(f) for f in (evaluation.finetune_fractions if fractions is None
                                         else fractions)),
      epochs=evaluation.finetune_epochs, batch_size=evaluation.finetune_batch_size,
      learning_rate=float(evaluation.finetune_learning_rate), seed=config.seed)


def build_evaluators(config: ml_collections.ConfigDict, num_classes: int, *, experiment=None,
                     data=None) -> list[Any]:
  """The config's evaluators: kNN, the linear probe and (eval.online_probe) the online probe, each
  scheduled by its eval.*_every_epochs, and (eval.finetune_fractions, which needs the experiment
  and the data) fine-tuning at the end."""
  evaluation = config.eval
  online = ([OnlineProbeEvaluator(every_epochs=evaluation.online_probe_every_epochs)]
            if evaluation.online_probe else [])
  if evaluation.finetune_fractions:
    if experiment is None or data is None:
      raise ValueError("eval.finetune_fractions: build_evaluators needs experiment= and data=")
    online.append(finetune_evaluator(config, num_classes, experiment, data))
  return [
      KnnEvaluator(num_classes=num_classes, k=evaluation.knn_k,
                   temperature=float(evaluation.knn_temperature),
                   every_epochs=evaluation.knn_every_epochs,
                   k_sweep=tuple(int(k) for k in evaluation.knn_k_sweep)),
      LinearProbeEvaluator(num_classes=num_classes, epochs=evaluation.linear_epochs,
                           batch_size=evaluation.linear_batch_size,
                           learning_rate=float(evaluation.linear_learning_rate),
                           weight_decay=float(evaluation.linear_weight_decay), seed=config.seed,
                           every_epochs=evaluation.linear_every_epochs),
  ] + online


def run_evaluators(evaluators, extractor: FeatureExtractor, state) -> dict[str, float]:
  """Every given evaluator on one extraction of the state's features."""
  if not evaluators:
    return {}
  features = extractor.of(state)
  results = {}
  for evaluator in evaluators:
    results.update(evaluator(features, state))
  return results
