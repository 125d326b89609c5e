"""Evaluators built from a config, each with its own schedule, sharing one compiled feature function.

    features = FeatureExtractor(experiment, data)       # the experiment's jitted feature function
    for evaluator in build_evaluators(config, num_classes):
      scalars = evaluator(features.of(state), state)     # {'knn_top1': ..., 'knn_top5': ...}

The features of a state are extracted once and shared by every evaluator due at that moment, and
the feature function is compiled once per run (not once per evaluation).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np

from rwl_jax import online_probe, parallel
from rwl_jax.data import order, sources
from rwl_jax.evaluate.knn import knn_accuracy
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
    """([N, D] features, [N] labels) of every example of split 'train' or 'test', in split order."""
    held = {"train": (self._data.train, self._data.train_shards),
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
  """Weighted kNN (k, temperature) on the frozen features: knn_top1, knn_top5."""

  num_classes: int
  k: int
  temperature: float
  every_epochs: int = 0
  name: str = "knn"

  def __call__(self, features: SplitFeatures, state=None) -> dict[str, float]:
    accuracy = knn_accuracy(*features.train, *features.test, num_classes=self.num_classes,
                            k=self.k, temperature=self.temperature)
    return {f"knn_{key}": value for key, value in accuracy.items()}


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
    top1, top5 = _online_correct(parallel.fetch(state.probe_params), test_features, test_labels.astype(np.int32))
    return {"online_top1": float(top1) / len(test_labels),
            "online_top5": float(top5) / len(test_labels)}


def build_evaluators(config: ml_collections.ConfigDict, num_classes: int) -> list[Any]:
  """The config's evaluators: kNN, the linear probe and (eval.online_probe) the online probe, each
  scheduled by its eval.*_every_epochs."""
  evaluation = config.eval
  online = ([OnlineProbeEvaluator(every_epochs=evaluation.online_probe_every_epochs)]
            if evaluation.online_probe else [])
  return [
      KnnEvaluator(num_classes=num_classes, k=evaluation.knn_k,
                   temperature=float(evaluation.knn_temperature),
                   every_epochs=evaluation.knn_every_epochs),
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
