"""Weighted k-nearest-neighbour accuracy on frozen features (Wu et al. 2018, the MoCo CIFAR
monitor).

For a test feature q and train features x_j with labels y_j, all L2-normalised:

    s_j         = q . x_j                                  (cosine similarity)
    N_k(q)      = the k train rows with the largest s_j     (equal s_j: the smaller index first)
    score_c(q)  = sum_{j in N_k(q)} exp(s_j / tau) * [y_j == c]
    prediction  = argmax_c score_c(q)                      (ties -> the smallest class id)

and top-1 is the fraction of test rows whose prediction equals their label; top-5 the fraction
whose label is among the 5 best-scored classes (online_probe.top_k_correct, the one top-k rule
of every evaluation). A k larger than the bank is clamped to N_train (every train row votes)
rather than refused, so one sweep runs on a subset of any size. knn_sweep scores several k
from one top-max(k) search.

The weights are computed as exp((s_j - s_max) / tau), s_max the row's largest similarity: that
multiplies every score of the row by the same positive constant, so the argmax is unchanged, but
it cannot overflow float32 (plain exp(s / tau) does once 1 / tau > ~88, i.e. tau < ~0.0114).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rwl_jax import online_probe
from rwl_jax.errors import ConfigError
from rwl_jax.losses import l2_normalize


def is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
  return is_int(value) or isinstance(value, (float, np.floating))


def check_compiled_shapes(caller: str, shapes: dict[str, tuple[int, ...]], train_x: np.ndarray,
                          test_x: np.ndarray) -> None:
  """A compiled evaluation takes the feature shapes it was compiled for: others would compile
  again, inside the loop, so they are refused."""
  given = {"train": train_x.shape, "test": test_x.shape}
  if given != shapes:
    raise ConfigError(f"{caller}: compiled for features of shapes {shapes}, got {given}")


def check_features_and_labels(caller: str, train_features, train_labels, test_features,
                              test_labels, num_classes) -> tuple[Any, np.ndarray, Any, np.ndarray]:
  """Validates a (train, test) pair of feature/label arrays; shared by kNN and the linear probe.

  Args:
    caller: the public function's name, the prefix of every error message.
    train_features: [N_train, D] real-valued features (any float dtype, bfloat16 included).
    train_labels: [N_train] integer labels in [0, num_classes).
    test_features: [N_test, D] real-valued features.
    test_labels: [N_test] integer labels in [0, num_classes).
    num_classes: the number of classes, an int >= 1.

  Returns:
    (train_features, train_labels, test_features, test_labels): features as float32 arrays (jax
    arrays stay jax arrays, anything else becomes NumPy), labels as int32 NumPy arrays.

  Raises:
    ConfigError (a ValueError) with a one-line message naming the first problem found.
  """
  def fail(message: str):
    raise ConfigError(f"{caller}: {message}")

  if not is_int(num_classes) or num_classes < 1:
    fail(f"num_classes must be an int >= 1, got {num_classes!r}")
  arrays = {}
  for name, value in (("train_features", train_features), ("test_features", test_features)):
    # NumPy stays NumPy (an evaluation's features are on the host): checked there, no eager
    # device ops to compile; a jax.Array is checked where it is.
    xp = jnp if isinstance(value, jax.Array) else np
    value = value if isinstance(value, jax.Array) else np.asarray(value)
    if value.ndim != 2:
      fail(f"{name} must be 2-D [rows, feature_dim], got shape {value.shape}")
    if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
      fail(f"{name} must be real-valued (float or int), got dtype {value.dtype}")
    if value.shape[0] == 0 or value.shape[1] == 0:
      fail(f"{name} is empty, shape {value.shape}")
    # float32 even for bfloat16 inputs: similarities and gradients need the mantissa.
    value = value.astype(np.float32)
    if not bool(xp.all(xp.isfinite(value))):
      fail(f"{name} contains NaN or inf")
    arrays[name] = value
  for name, value in (("train_labels", train_labels), ("test_labels", test_labels)):
    value = np.asarray(value)
    if value.ndim != 1:
      fail(f"{name} must be 1-D [rows], got shape {value.shape}")
    if not np.issubdtype(value.dtype, np.integer):
      fail(f"{name} must be integers, got dtype {value.dtype}")
    if value.size and (value.min() < 0 or value.max() >= num_classes):
      fail(f"{name} must lie in [0, num_classes={num_classes}), got values in "
           f"[{value.min()}, {value.max()}]")
    arrays[name] = value.astype(np.int32)
  for split in ("train", "test"):
    rows, labels = arrays[f"{split}_features"].shape[0], arrays[f"{split}_labels"].shape[0]
    if rows != labels:
      fail(f"{split}_features has {rows} rows but {split}_labels has {labels}")
  train_dim, test_dim = arrays["train_features"].shape[1], arrays["test_features"].shape[1]
  if train_dim != test_dim:
    fail(f"feature dims differ: train_features has {train_dim}, test_features has {test_dim}")
  return (arrays["train_features"], arrays["train_labels"], arrays["test_features"],
          arrays["test_labels"])


@functools.partial(jax.jit, static_argnames=("num_classes", "ks", "chunk_size"))
def _knn_chunks(train_features: jax.Array, train_labels: jax.Array, test_features: jax.Array,
                test_labels: jax.Array, temperature: jax.Array, *, num_classes: int,
                ks: tuple[int, ...], chunk_size: int) -> tuple[jax.Array, jax.Array]:
  """(predictions [padded test rows, len(ks)], correct [len(ks), 2] (top-1, top-5 real rows)).

  One pass for every k: the top-max(ks) neighbours are found once per chunk, and the votes of
  each k are the first k of them (top_k returns them in decreasing similarity). temperature is
  traced, so sweeping it does not recompile; ks and the chunk size fix shapes.
  """
  chex.assert_rank([train_features, test_features], 2)
  chex.assert_rank([train_labels, test_labels], 1)
  num_test = test_features.shape[0]
  num_chunks = -(-num_test // chunk_size)
  pad = num_chunks * chunk_size - num_test
  train = l2_normalize(train_features)
  # Padded rows are zeros (normalised to zeros): they get some prediction, masked out below.
  test = jnp.pad(l2_normalize(test_features), ((0, pad), (0, 0)))
  labels = jnp.pad(test_labels, (0, pad))
  valid = jnp.arange(num_chunks * chunk_size) < num_test
  rows = jnp.arange(chunk_size)[:, None]
  rank = jnp.arange(max(ks))

  def one_chunk(args):
    queries, query_labels, query_valid = args
    # HIGHEST: on GPUs/TPUs the default float32 matmul rounds to tf32/bf16, which reorders
    # near-equal neighbours; the [chunk, N_train] block is the only big temporary.
    similarity = jnp.dot(queries, train.T, precision=jax.lax.Precision.HIGHEST)
    # Equal similarities: top_k keeps the smaller train index first.
    top_similarity, top_index = jax.lax.top_k(similarity, max(ks))
    weights = jnp.exp((top_similarity - top_similarity[:, :1]) / temperature)
    neighbour_labels = train_labels[top_index]
    predictions, correct = [], []
    for k in ks:
      # Scatter-add the votes: O(chunk * C) memory, not O(chunk * k * C) for one-hot votes.
      scores = jnp.zeros((chunk_size, num_classes), jnp.float32)
      scores = scores.at[rows, neighbour_labels].add(jnp.where(rank < k, weights, 0.0))
      predictions.append(jnp.argmax(scores, axis=-1).astype(jnp.int32))
      # Top-5 (top-C with fewer classes); top_k breaks ties toward the smaller class id, as
      # argmax does, so its top-1 is the prediction.
      correct.append(jnp.stack(online_probe.top_k_correct(scores, query_labels, k=5,
                                                          mask=query_valid)))
    return jnp.stack(predictions, axis=1), jnp.stack(correct)

  # lax.map runs the chunks one after another, so peak memory stays O(chunk_size * N_train).
  predictions, correct = jax.lax.map(
      one_chunk, (test.reshape(num_chunks, chunk_size, -1),
                  labels.reshape(num_chunks, chunk_size), valid.reshape(num_chunks, chunk_size)))
  return predictions.reshape(-1, len(ks)), jnp.sum(correct, axis=0)


def _check_k(caller: str, k) -> None:
  if not is_int(k) or k < 1:
    raise ConfigError(f"{caller}: k must be an int >= 1, got {k!r}")


def _check_setting(caller, ks, temperature, chunk_size) -> None:
  if not ks:
    raise ConfigError(f"{caller}: ks must hold at least one k, got ()")
  for k in ks:
    _check_k(caller, k)
  if not is_real(temperature) or not temperature > 0:
    raise ConfigError(f"{caller}: temperature must be a number > 0, got {temperature!r}")
  if not is_int(chunk_size) or chunk_size < 1:
    raise ConfigError(f"{caller}: chunk_size must be an int >= 1, got {chunk_size!r}")


def _plan(ks, num_train: int, num_test: int, chunk_size: int):
  """(distinct clamped ks, column of each k in them, chunk size): k > N_train is clamped to
  N_train (every train row votes), equal clamped ks run once, and a small test set is never
  padded up to a large chunk."""
  clamped = tuple(min(int(k), num_train) for k in ks)
  distinct = tuple(sorted(set(clamped)))
  return distinct, [distinct.index(c) for c in clamped], min(chunk_size, num_test)


def _tally(ks, columns, predictions, correct, num_test):
  """(predictions [N_test, len(ks)], {k: (top-1 correct, top-5 correct)}) of _knn_chunks' out."""
  predictions, correct = np.asarray(predictions)[:num_test], np.asarray(correct)
  return (predictions[:, columns],
          {k: (int(correct[c, 0]), int(correct[c, 1])) for k, c in zip(ks, columns)})


def _run(caller, train_features, train_labels, test_features, test_labels, num_classes, ks,
         temperature, chunk_size):
  """(predictions [N_test, len(ks)], {k: (top-1 correct, top-5 correct)}, N_test)."""
  _check_setting(caller, ks, temperature, chunk_size)
  train_x, train_y, test_x, test_y = check_features_and_labels(
      caller, train_features, train_labels, test_features, test_labels, num_classes)
  num_test = test_x.shape[0]
  distinct, columns, chunk_size = _plan(ks, train_x.shape[0], num_test, chunk_size)
  predictions, correct = _knn_chunks(
      train_x, train_y, test_x, test_y, np.float32(temperature), num_classes=num_classes,
      ks=distinct, chunk_size=chunk_size)
  return (*_tally(ks, columns, predictions, correct, num_test), num_test)


class KnnSweep:
  """knn_sweep for one shape of bank and queries, compiled once when built (ahead of time).

      sweep = KnnSweep(num_train=50_000, num_test=10_000, dim=512, num_classes=10, ks=(200, 20))
      sweep(train_x, train_y, test_x, test_y, temperature=0.1)   # {k: {'top1', 'top5'}}

  A run's evaluations then cost the search, never a compilation: the bank and the test split
  keep their sizes all run long. Features of another shape are refused (ConfigError), not
  recompiled; the temperature is an input, not part of the program.
  """

  def __init__(self, *, num_train: int, num_test: int, dim: int, num_classes: int,
               ks: Sequence[int], chunk_size: int = 1024, caller: str = "KnnSweep"):
    self.caller, self.ks, self.num_classes = caller, tuple(ks), num_classes
    _check_setting(caller, self.ks, 1.0, chunk_size)
    if not is_int(num_classes) or num_classes < 1:
      raise ConfigError(f"{caller}: num_classes must be an int >= 1, got {num_classes!r}")
    self.shapes = {"train": (num_train, dim), "test": (num_test, dim)}
    distinct, self._columns, chunk_size = _plan(self.ks, num_train, num_test, chunk_size)
    spec = jax.ShapeDtypeStruct
    self._compiled = _knn_chunks.lower(
        spec((num_train, dim), np.float32), spec((num_train,), np.int32),
        spec((num_test, dim), np.float32), spec((num_test,), np.int32), spec((), np.float32),
        num_classes=num_classes, ks=distinct, chunk_size=chunk_size).compile()

  def __call__(self, train_features, train_labels, test_features, test_labels, *,
               temperature: float = 0.1) -> dict[int, dict[str, float]]:
    """{k: {'top1': float, 'top5': float}} for every k, as knn_sweep."""
    _check_setting(self.caller, self.ks, temperature, 1)
    train_x, train_y, test_x, test_y = check_features_and_labels(
        self.caller, train_features, train_labels, test_features, test_labels, self.num_classes)
    check_compiled_shapes(self.caller, self.shapes, train_x, test_x)
    num_test = test_x.shape[0]
    _, correct = _tally(self.ks, self._columns, *self._compiled(
        train_x, train_y, test_x, test_y, np.float32(temperature)), num_test)
    return {k: {"top1": top1 / num_test, "top5": top5 / num_test}
            for k, (top1, top5) in correct.items()}


def knn_predict(train_features, train_labels, test_features, *, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk_size: int = 1024) -> np.ndarray:
  """Predicted class of every test row by weighted kNN (the module docstring's formula).

  Args:
    train_features: [N_train, D] features (any float dtype; computed in float32).
    train_labels: [N_train] integer labels in [0, num_classes).
    test_features: [N_test, D] features.
    num_classes: C, the number of classes.
    k: neighbours per test row, >= 1; clamped to N_train.
    temperature: tau > 0 of the vote weights exp(s / tau).
    chunk_size: test rows per step; peak memory is O(chunk_size * N_train).

  Returns:
    [N_test] int32 NumPy array of predicted classes.

  Raises:
    ValueError (ConfigError) with a one-line message on invalid input.
  """
  dummy_labels = np.zeros(np.shape(test_features)[:1], np.int32)
  predictions, _, _ = _run("knn_predict", train_features, train_labels, test_features,
                           dummy_labels, num_classes, (k,), temperature, chunk_size)
  return predictions[:, 0]


def knn_top1(train_features, train_labels, test_features, test_labels, *, num_classes: int,
             k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> float:
  """Weighted-kNN top-1 accuracy on the test set, in [0, 1].

  L2-normalise, s_j = q . x_j, keep the k largest s_j, score_c = sum of exp(s_j / tau) over those
  neighbours with label c, predict argmax_c score_c; return the mean over test rows of
  [prediction == label]. See the module docstring.

  Args:
    train_features: [N_train, D] features (any float dtype; computed in float32).
    train_labels: [N_train] integer labels in [0, num_classes).
    test_features: [N_test, D] features.
    test_labels: [N_test] integer labels in [0, num_classes).
    num_classes: C, the number of classes.
    k: neighbours per test row, >= 1; clamped to N_train.
    temperature: tau > 0 of the vote weights exp(s / tau).
    chunk_size: test rows per step (the last chunk is padded and masked out); peak memory is
      O(chunk_size * N_train).

  Returns:
    The top-1 accuracy as a Python float.

  Raises:
    ValueError (ConfigError) with a one-line message on invalid input.
  """
  _check_k("knn_top1", k)
  _, correct, num_test = _run("knn_top1", train_features, train_labels, test_features,
                              test_labels, num_classes, (k,), temperature, chunk_size)
  return correct[k][0] / num_test


def knn_accuracy(train_features, train_labels, test_features, test_labels, *, num_classes: int,
                 k: int = 200, temperature: float = 0.1,
                 chunk_size: int = 1024) -> dict[str, float]:
  """{'top1', 'top5'}: weighted-kNN accuracies (knn_top1's rule; top-5 counts a test row correct
  when its label is among the 5 best-scored classes, all of them when there are fewer)."""
  _check_k("knn_accuracy", k)
  return knn_sweep(train_features, train_labels, test_features, test_labels,
                   num_classes=num_classes, ks=(k,), temperature=temperature,
                   chunk_size=chunk_size, caller="knn_accuracy")[k]


def knn_sweep(train_features, train_labels, test_features, test_labels, *, num_classes: int,
              ks: Sequence[int], temperature: float = 0.1, chunk_size: int = 1024,
              caller: str = "knn_sweep") -> dict[int, dict[str, float]]:
  """{k: {'top1', 'top5'}} for every k of ks, from ONE pass over the bank.

  Per test row the top-max(ks) neighbours are found once; the votes of each k are then the
  exp(s_j / tau)-weighted labels of the first k of them (the module docstring's rule for that
  k), so a sweep costs one similarity matrix and one top_k, not one per k. A k larger than the
  bank (N_train) is clamped to N_train, as in knn_top1: every train row votes.

  Args:
    ks: one or more ints >= 1 (duplicates allowed; each appears once in the result).
    The rest as in knn_top1.

  Returns:
    {k: {'top1': float, 'top5': float}} in [0, 1], keyed by the ks as given (not clamped).

  Raises:
    ValueError (ConfigError) with a one-line message on invalid input.
  """
  ks = tuple(ks)
  _, correct, num_test = _run(caller, train_features, train_labels, test_features, test_labels,
                              num_classes, ks, temperature, chunk_size)
  return {k: {"top1": top1 / num_test, "top5": top5 / num_test}
          for k, (top1, top5) in correct.items()}
