"""Evaluators built from a config, each with its own schedule, sharing one compiled feature function.

    features = FeatureExtractor(experiment, data)       # the experiment's jitted feature function
    evaluators = build_evaluators(config.eval, num_classes, seed=config.seed)
    for task in compile_tasks(evaluators, features, abstract_state).values():
      task()                                             # optional: ahead of time, once
    for evaluator in evaluators:
      scalars = evaluator(features.of(state), state)     # {'knn_top1': ..., 'knn_top5': ...}

The features of a state are extracted once and shared by every evaluator due at that moment.
Every program an evaluation runs (the feature function, the kNN sweep, the linear probe, the
online probe's count) has one shape all run long (the last batch of a split is padded and
masked, the bank is the whole split), so it compiles once per run; compile_tasks compiles them
ahead of time (train does, before the loop, on threads), and an evaluation then costs its forward
pass.
The fine-tuning evaluator (eval.finetune_fractions) ignores the features: it is built with the
experiment and the labelled splits and trains a copy of the state's encoder on images.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import ml_collections
import numpy as np

from rwl_jax import online_probe, parallel, tables
from rwl_jax.data import order, sources
from rwl_jax.errors import ConfigError
from rwl_jax.evaluate import finetune
from rwl_jax.evaluate.knn import KnnSweep
from rwl_jax.evaluate.linear_probe import LinearProbe


def _positive_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate(evaluation: ml_collections.ConfigDict) -> None:
  """The eval section's values (types are checked against the defaults beforehand); one
  ConfigError line naming the problem."""
  for name in ("batch_size", "knn_k", "linear_epochs", "linear_batch_size", "finetune_epochs",
               "finetune_batch_size"):
    if not _positive_int(evaluation[name]):
      raise ConfigError(f"eval.{name} must be an integer >= 1, got {evaluation[name]!r}")
  for name in ("knn_every_epochs", "linear_every_epochs", "online_probe_every_epochs",
               "probe_batch_size"):
    if not (isinstance(evaluation[name], int) and evaluation[name] >= 0):
      raise ConfigError(f"eval.{name} must be an integer >= 0 (0 = off), got {evaluation[name]!r}")
  if not isinstance(evaluation.online_probe, bool):
    raise ConfigError(f"eval.online_probe must be True or False, got {evaluation.online_probe!r}")
  for name in ("knn_temperature", "linear_learning_rate", "online_probe_learning_rate",
               "finetune_learning_rate"):
    if not evaluation[name] > 0:
      raise ConfigError(f"eval.{name} must be > 0, got {evaluation[name]!r}")
  if not evaluation.linear_weight_decay >= 0:
    raise ConfigError(f"eval.linear_weight_decay must be >= 0, got "
                      f"{evaluation.linear_weight_decay!r}")
  if not all(_positive_int(k) for k in evaluation.knn_k_sweep):
    raise ConfigError(f"eval.knn_k_sweep must be integers >= 1 like (10, 20, 100, 200) (() = off), "
                      f"got {tuple(evaluation.knn_k_sweep)!r}")
  fractions = tuple(evaluation.finetune_fractions)
  if not all(0 < f <= 1 for f in fractions) or len(
      {tables.fraction_name(f) for f in fractions}) < len(fractions):
    raise ConfigError(f"eval.finetune_fractions must be distinct fractions of the labels in (0, 1] "
                      f"like (0.01, 0.1) (() = off), got {fractions!r}")


def round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class SplitFeatures:
  """Frozen encoder features of the train and test splits, each in split order, with labels."""

  train: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]


class FeatureExtractor:
  """Features of a whole split, computed on the mesh from this process's examples (uint8 in,
  float32 out) with the experiment's one jitted feature function (compiled ahead of time by
  compile(), else at the first extraction)."""

  def __init__(self, experiment, data):
    self._experiment = experiment
    self._data = data
    self._batch_size = round_up(experiment.eval_batch_size, experiment.mesh.devices.size)
    self._feature_fn = experiment.features

  def _held(self, name: str):
    if not self._data.evaluates:
      raise ConfigError(f"no labelled evaluation data: {self._data.evaluation_off}")
    return {"train": (self._data.eval_train, self._data.eval_train_shards),
            "test": (self._data.test, self._data.test_shards)}[name]

  def _batch_spec(self, state) -> tuple[Any, ...]:
    """The feature function's abstract inputs: the state's parameters and one global batch."""
    local_split, _ = self._held("test")
    sharded = parallel.data_sharded(self._experiment.mesh)
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharded)
    batch = self._batch_size
    label = jax.dtypes.canonicalize_dtype(local_split.labels.dtype)  # int64 -> int32, as fed
    rows = {"label": spec((batch,), label), "mask": spec((batch,), np.bool_),
            "position": spec((batch,), np.int32)}
    return (state.params, state.batch_stats,
            spec((batch,) + local_split.images.shape[1:], np.uint8), rows)

  def compile(self, state) -> None:
    """Compiles the feature function for this run's batches now; state may be abstract."""
    self._feature_fn = self._experiment.features.lower(*self._batch_spec(state)).compile()

  def abstract(self, state) -> SplitFeatures:
    """The shapes and dtypes of of(state) (state may be abstract), nothing computed."""
    features, rows = jax.eval_shape(self._experiment.features, *self._batch_spec(state))
    dim, label = features.shape[1], rows["label"].dtype
    spec = lambda name: (
        jax.ShapeDtypeStruct((self._held(name)[1].num_examples, dim), np.float32),
        jax.ShapeDtypeStruct((self._held(name)[1].num_examples,), label))
    return SplitFeatures(train=spec("train"), test=spec("test"))

  def split(self, state, name: str) -> tuple[np.ndarray, np.ndarray]:
    """([N, D] features, [N] labels) of every example of split 'train' (the evaluation's: the
    kNN bank and linear-probe training split, data.eval_train) or 'test', in split order."""
    local_split, shards = self._held(name)
    return extract(self._feature_fn, state.params, state.batch_stats, local_split, shards,
                   self._batch_size, self._experiment.mesh)

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

  def compile(self, features: SplitFeatures, state) -> None:
    """Compiles the evaluation for features and a state of these shapes (abstract: nothing is
    computed); later calls with them compile nothing."""

  def __call__(self, features: SplitFeatures, state) -> dict[str, float]:
    ...


def _shapes(features: SplitFeatures) -> dict[str, Any]:
  (train_x, _), (test_x, _) = features.train, features.test
  return {"num_train": train_x.shape[0], "num_test": test_x.shape[0], "dim": train_x.shape[1]}


def _program(programs: dict, features: SplitFeatures, build: Callable[..., Any]) -> Any:
  """The evaluator's program for these features' shapes: the one compile() built, else built
  (and compiled) now, once per shape."""
  key = tuple(sorted(_shapes(features).items()))
  if key not in programs:
    programs[key] = build(**_shapes(features))
  return programs[key]


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
  programs: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def _build(self, **shapes) -> KnnSweep:
    return KnnSweep(**shapes, num_classes=self.num_classes, ks=(self.k,) + tuple(self.k_sweep),
                    caller="knn")

  def compile(self, features: SplitFeatures, state=None) -> None:
    _program(self.programs, features, self._build)

  def __call__(self, features: SplitFeatures, state=None) -> dict[str, float]:
    sweep = _program(self.programs, features, self._build)(
        *features.train, *features.test, temperature=self.temperature)
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
  programs: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def _build(self, **shapes) -> LinearProbe:
    return LinearProbe(**shapes, num_classes=self.num_classes, epochs=self.epochs,
                       batch_size=self.batch_size, learning_rate=self.learning_rate,
                       weight_decay=self.weight_decay, seed=self.seed, caller="linear probe")

  def compile(self, features: SplitFeatures, state=None) -> None:
    _program(self.programs, features, self._build)

  def __call__(self, features: SplitFeatures, state=None) -> dict[str, float]:
    accuracy = _program(self.programs, features, self._build)(*features.train, *features.test)
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
  programs: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def compile(self, features: SplitFeatures, state) -> None:
    (test_features, test_labels), host = features.test, lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype)  # the probe's parameters are fetched to the host first
    self.programs["count"] = _online_correct.lower(
        jax.tree.map(host, state.probe_params), host(test_features),
        jax.ShapeDtypeStruct(test_labels.shape, np.int32)).compile()

  def __call__(self, features: SplitFeatures, state) -> dict[str, float]:
    test_features, test_labels = features.test
    count = self.programs.get("count", _online_correct)
    top1, top5 = count(parallel.fetch(state.probe_params), test_features,
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

  def compile(self, features: SplitFeatures, state) -> None:
    """Nothing ahead: fine-tuning runs once, at the end, and compiles its own steps then."""

  def __call__(self, features: SplitFeatures | None, state) -> dict[str, float]:
    encoder = finetune.Encoder.of_run(self.experiment.defs, state.params, state.batch_stats)
    results = {}
    for fraction in self.fractions:
      accuracy = finetune.finetune_accuracy(
          encoder, self.train, self.test, fraction=fraction, num_classes=self.num_classes,
          epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
          seed=self.seed, recipe=self.experiment.recipe, image_size=self.experiment.image_size,
          mesh=self.experiment.mesh, eval_batch_size=self.experiment.eval_batch_size)
      name = tables.fraction_name(fraction)
      results.update({f"finetune_{name}_{key}": value for key, value in accuracy.items()})
    return results


def finetune_evaluator(evaluation: ml_collections.ConfigDict, num_classes: int, experiment, data,
                       fractions: tuple[float, ...] | None = None) -> FinetuneEvaluator:
  """The eval section's FinetuneEvaluator on data's labelled splits: the evaluation's training
  split (data.eval_train, the kNN bank: the training split unless another labelled one is named)
  and data.test (fractions: default the section's finetune_fractions), seeded with the
  experiment's seed."""
  return FinetuneEvaluator(
      experiment=experiment, train=data.eval_train, test=data.test, num_classes=num_classes,
      fractions=tuple(float(f) for f in (evaluation.finetune_fractions if fractions is None
                                         else fractions)),
      epochs=evaluation.finetune_epochs, batch_size=evaluation.finetune_batch_size,
      learning_rate=float(evaluation.finetune_learning_rate), seed=experiment.seed)


def build_evaluators(evaluation: ml_collections.ConfigDict, num_classes: int, *, seed: int,
                     experiment=None, data=None) -> list[Any]:
  """The eval section's evaluators: kNN, the linear probe (seeded with `seed`) and (online_probe)
  the online probe, each scheduled by its *_every_epochs, and (finetune_fractions, which needs the
  experiment and the data) fine-tuning at the end."""
  online = ([OnlineProbeEvaluator(every_epochs=evaluation.online_probe_every_epochs)]
            if evaluation.online_probe else [])
  if evaluation.finetune_fractions:
    if experiment is None or data is None:
      raise ValueError("eval.finetune_fractions: build_evaluators needs experiment= and data=")
    online.append(finetune_evaluator(evaluation, num_classes, experiment, data))
  return [
      KnnEvaluator(num_classes=num_classes, k=evaluation.knn_k,
                   temperature=float(evaluation.knn_temperature),
                   every_epochs=evaluation.knn_every_epochs,
                   k_sweep=tuple(int(k) for k in evaluation.knn_k_sweep)),
      LinearProbeEvaluator(num_classes=num_classes, epochs=evaluation.linear_epochs,
                           batch_size=evaluation.linear_batch_size,
                           learning_rate=float(evaluation.linear_learning_rate),
                           weight_decay=float(evaluation.linear_weight_decay), seed=seed,
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


def compile_tasks(evaluators, extractor: FeatureExtractor, state) -> dict[str, Callable[[], None]]:
  """{name: task} compiling each program the evaluators run (the feature function and each
  evaluator's own) for this run's shapes; state may be abstract. The tasks are independent: a
  caller may run them on threads, concurrently (XLA compiles without holding the GIL)."""
  if not evaluators:
    return {}
  features = extractor.abstract(state)
  tasks = {"features": lambda: extractor.compile(state)}
  tasks.update({e.name: (lambda e=e: e.compile(features, state)) for e in evaluators})
  return tasks

