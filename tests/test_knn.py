"""Weighted kNN against an independent NumPy implementation of Wu et al.'s formula."""

import jax.numpy as jnp
import numpy as np
import pytest

from rwl_jax.run import experiment
from rwl_jax.configs import common
from rwl_jax.errors import ConfigError
from rwl_jax.evaluate import knn_top1
from rwl_jax.evaluate.evaluators import KnnEvaluator, SplitFeatures
from rwl_jax.evaluate.knn import knn_accuracy, knn_predict, knn_sweep


def numpy_knn_scores(train_x, train_y, test_x, num_classes, k, temperature):
  """log score_c per test row, float64: full similarity matrix, argsort, explicit loops.

  Scores are kept in the log domain (logaddexp of s / tau), so any temperature is exact here.
  """
  train_x = np.asarray(train_x, np.float64)
  test_x = np.asarray(test_x, np.float64)
  train_x = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
  test_x = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
  similarity = test_x @ train_x.T
  k = min(k, len(train_x))
  log_scores = np.full((len(test_x), num_classes), -np.inf)
  for row in range(len(test_x)):
    neighbours = np.argsort(-similarity[row], kind="stable")[:k]
    for j in neighbours:
      c = train_y[j]
      log_scores[row, c] = np.logaddexp(log_scores[row, c], similarity[row, j] / temperature)
  return log_scores


def assert_matches_reference(predictions, log_scores):
  """Predictions equal the reference argmax, except on rows whose top two scores nearly tie."""
  top2 = np.sort(log_scores, axis=1)[:, -2:]
  near_tie = (top2[:, 1] - top2[:, 0]) < 1e-4  # float32 similarities / tau: ~1e-5 error
  assert near_tie.mean() < 0.05, "too many near-ties: the comparison would say little"
  expected = np.argmax(log_scores, axis=1)
  mismatched = np.flatnonzero((predictions != expected) & ~near_tie)
  assert mismatched.size == 0, f"rows {mismatched[:10]} differ from the reference"


def random_problem(seed, num_train=150, num_test=97, dim=16, num_classes=5):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(num_train, dim)).astype(np.float32),
          rng.integers(0, num_classes, num_train),
          rng.normal(size=(num_test, dim)).astype(np.float32),
          rng.integers(0, num_classes, num_test))


@pytest.mark.parametrize("k, temperature, chunk_size", [
    (1, 0.1, 97),
    (10, 0.07, 7),
    (20, 0.5, 32),
    (50, 0.005, 40),  # 1 / tau = 200: plain exp(s / tau) would overflow float32
    (149, 1.0, 1000),  # chunk larger than the test set
    (500, 0.1, 13),  # k > N_train = 150: clamped, every train row votes
])
def test_matches_numpy_reference(k, temperature, chunk_size):
  num_classes = 5
  train_x, train_y, test_x, test_y = random_problem(k, num_classes=num_classes)
  log_scores = numpy_knn_scores(train_x, train_y, test_x, num_classes, k, temperature)
  predictions = knn_predict(train_x, train_y, test_x, num_classes=num_classes, k=k,
                            temperature=temperature, chunk_size=chunk_size)
  assert predictions.shape == (len(test_x),)
  assert_matches_reference(predictions, log_scores)
  accuracy = knn_top1(train_x, train_y, test_x, test_y, num_classes=num_classes, k=k,
                      temperature=temperature, chunk_size=chunk_size)
  assert isinstance(accuracy, float)
  assert accuracy == pytest.approx(np.mean(np.argmax(log_scores, axis=1) == test_y),
                                   abs=1.5 / len(test_x))


def test_accuracy_counts_only_real_rows():
  # 10 test rows in chunks of 4: the 2 padded rows must not count, whatever they predict. With a
  # single train class every row (padded ones too) predicts c, so over all c one padding label
  # would match if padded rows leaked into the count.
  train_x, _, test_x, _ = random_problem(3, num_test=10)
  for c in range(5):
    train_y = np.full(len(train_x), c)
    test_y = np.full(len(test_x), c)
    assert knn_top1(train_x, train_y, test_x, test_y, num_classes=5, k=7, chunk_size=4) == 1.0
    assert knn_top1(train_x, train_y, test_x, (test_y + 1) % 5, num_classes=5, k=7,
                    chunk_size=4) == 0.0


def test_bfloat16_features_match_float32_of_the_same_values():
  train_x, train_y, test_x, test_y = random_problem(5)
  train_bf16 = jnp.asarray(train_x, jnp.bfloat16)
  test_bf16 = jnp.asarray(test_x, jnp.bfloat16)
  log_scores = numpy_knn_scores(np.asarray(train_bf16, np.float32), train_y,
                                np.asarray(test_bf16, np.float32), 5, 20, 0.1)
  predictions = knn_predict(train_bf16, train_y, test_bf16, num_classes=5, k=20)
  assert_matches_reference(predictions, log_scores)


def test_separated_clusters_are_classified_perfectly():
  rng = np.random.default_rng(0)
  num_classes, dim = 8, 32
  centres = rng.normal(size=(num_classes, dim)) * 10.0
  train_y = np.repeat(np.arange(num_classes), 40)
  test_y = rng.integers(0, num_classes, 123)
  train_x = centres[train_y] + rng.normal(size=(len(train_y), dim))
  test_x = centres[test_y] + rng.normal(size=(len(test_y), dim))
  # k = 200 > 40 per class: far neighbours vote too, but their weights are exponentially smaller.
  assert knn_top1(train_x, train_y, test_x, test_y, num_classes=num_classes) == 1.0


def test_random_labels_give_chance():
  rng = np.random.default_rng(1)
  num_classes = 10
  train_x = rng.normal(size=(2000, 32))
  test_x = rng.normal(size=(1000, 32))
  accuracy = knn_top1(train_x, rng.integers(0, num_classes, 2000), test_x,
                      rng.integers(0, num_classes, 1000), num_classes=num_classes, k=20,
                      chunk_size=256)
  assert abs(accuracy - 1 / num_classes) < 0.05  # ~5 standard errors of 1000 Bernoulli(0.1)


def test_invariant_to_rescaling_each_row():
  train_x, train_y, test_x, test_y = random_problem(7)
  rng = np.random.default_rng(7)
  expected = knn_predict(train_x, train_y, test_x, num_classes=5, k=15)
  # Cosine similarity ignores each row's norm; a dot-product kNN would not.
  train_scaled = train_x * rng.uniform(0.01, 100.0, size=(len(train_x), 1))
  test_scaled = test_x * rng.uniform(0.01, 100.0, size=(len(test_x), 1)) * 1e3
  scaled = knn_predict(train_scaled, train_y, test_scaled, num_classes=5, k=15)
  np.testing.assert_array_equal(scaled, expected)
  assert (knn_top1(train_scaled, train_y, test_scaled, test_y, num_classes=5, k=15)
          == knn_top1(train_x, train_y, test_x, test_y, num_classes=5, k=15))


def _bad_inputs():
  x, y, tx, ty = random_problem(0, num_train=20, num_test=10)
  ok = dict(train_features=x, train_labels=y, test_features=tx, test_labels=ty, num_classes=5)
  return [
      (dict(ok, train_labels=y[:-1]), r"train_features has 20 rows but train_labels has 19"),
      (dict(ok, test_labels=ty[:-1]), r"test_features has 10 rows but test_labels has 9"),
      (dict(ok, k=0), r"k must be an int >= 1"),
      (dict(ok, temperature=0.0), r"temperature must be a number > 0"),
      (dict(ok, temperature=-0.1), r"temperature must be a number > 0"),
      (dict(ok, chunk_size=0), r"chunk_size must be an int >= 1"),
      (dict(ok, test_features=tx[:, :8]), r"feature dims differ.*16.*8"),
      (dict(ok, train_labels=np.where(y == 0, 5, y)), r"train_labels must lie in \[0, num_class"),
      (dict(ok, test_labels=ty - 1), r"test_labels must lie in \[0, num_classes=5\)"),
      (dict(ok, train_labels=y.astype(np.float32)), r"train_labels must be integers"),
      (dict(ok, train_features=x[0]), r"train_features must be 2-D"),
      (dict(ok, test_features=tx[:0], test_labels=ty[:0]), r"test_features is empty"),
      (dict(ok, train_features=np.where(x > 2, np.nan, x)), r"train_features contains NaN"),
      (dict(ok, num_classes=0), r"num_classes must be an int >= 1"),
  ]


@pytest.mark.parametrize("kwargs, message", _bad_inputs())
def test_invalid_input_raises_value_error_naming_the_problem(kwargs, message):
  with pytest.raises(ValueError, match=message) as error:
    knn_top1(**kwargs)
  assert "\n" not in str(error.value)
  assert str(error.value).startswith("knn_top1: ")


def reference_bounds(log_scores, labels):
  """{'top1', 'top5'}: (rows surely correct, rows whose outcome a near-tie of float32 rounding
  could flip) by the float64 reference. Exact ties (equal sums of the same weights, or classes
  without votes at -inf) go to the smaller class id in both implementations: not near-ties."""
  order = np.argsort(-log_scores, axis=1, kind="stable")  # ties: the smaller class first
  ranked = np.take_along_axis(log_scores, order, axis=1)
  bounds = {}
  for name, top in (("top1", 1), ("top5", 5)):
    hit = np.any(order[:, :top] == labels[:, None], axis=1)
    with np.errstate(invalid="ignore"):
      gap = ranked[:, top - 1] - ranked[:, top]
    near = (np.nan_to_num(gap, nan=1.0) < 1e-4) & (gap != 0)
    bounds[name] = (int(np.sum(hit & ~near)), int(np.sum(near)))
  return bounds


def assert_within(accuracy, bounds, num_test):
  for name, (sure, ambiguous) in bounds.items():
    correct = round(accuracy[name] * num_test)
    assert sure <= correct <= sure + ambiguous, (name, correct, sure, ambiguous)
    assert ambiguous <= 0.05 * num_test, "too many near-ties: the comparison would say little"


SWEEP = (1, 10, 20, 100, 149, 150, 500)  # 150 train rows: k = 500 is clamped to 150


@pytest.mark.parametrize("duplicated", [False, True])
def test_sweep_matches_numpy_reference_for_every_k(duplicated):
  num_classes = 10
  train_x, train_y, test_x, test_y = random_problem(11, num_classes=num_classes, num_test=120)
  if duplicated:  # rows 2i and 2i + 1 identical, different labels: every k cuts through ties
    train_x = np.repeat(train_x[:75], 2, axis=0)
    train_y = np.stack([train_y[:75], (train_y[:75] + 1) % num_classes], axis=1).reshape(-1)
  sweep = knn_sweep(train_x, train_y, test_x, test_y, num_classes=num_classes, ks=SWEEP,
                    temperature=0.1, chunk_size=50)
  assert set(sweep) == set(SWEEP)
  for k in SWEEP:
    log_scores = numpy_knn_scores(train_x, train_y, test_x, num_classes, k, 0.1)
    assert_within(sweep[k], reference_bounds(log_scores, test_y), len(test_y))
  for k in (20, 149):  # one pass for all k gives each k's own figures exactly
    assert sweep[k] == knn_accuracy(train_x, train_y, test_x, test_y, num_classes=num_classes,
                                    k=k, temperature=0.1, chunk_size=50)
  assert sweep[500] == sweep[150]  # k > N_train: clamped, every train row votes


def test_sweep_ties_take_the_smaller_index_then_the_smaller_class():
  # Three identical train rows labelled 2, 0, 1 (indices 0, 1, 2), and a far one labelled 3.
  x = np.asarray([[1.0, 0.0]] * 3 + [[-1.0, 0.2]], np.float32)
  y = np.asarray([2, 0, 1, 3])
  query = np.asarray([[1.0, 0.0]], np.float32)
  sweep = knn_sweep(x, y, query, np.asarray([2]), num_classes=4, ks=(1, 2, 3, 4, 9))
  # k = 1: index 0 (class 2) among the equal neighbours; k = 2: classes 2 and 0 tie at equal
  # weight -> class 0; k = 3: three-way tie -> 0; the far row's vote is exp(-2 / 0.1)-small.
  assert [sweep[k]["top1"] for k in (1, 2, 3, 4, 9)] == [1.0, 0.0, 0.0, 0.0, 0.0]
  assert all(sweep[k]["top5"] == 1.0 for k in (1, 2, 3, 4, 9))
  for k, expected in ((1, 2), (2, 0), (3, 0)):
    assert knn_predict(x, y, query, num_classes=4, k=k)[0] == expected
    assert np.argmax(numpy_knn_scores(x, y, query, 4, k, 0.1)[0]) == expected


def test_sweep_refuses_bad_ks():
  x, y, tx, ty = random_problem(0, num_train=20, num_test=10)
  with pytest.raises(ConfigError, match=r"^knn_sweep: ks must hold at least one k"):
    knn_sweep(x, y, tx, ty, num_classes=5, ks=())
  with pytest.raises(ConfigError, match=r"^knn_sweep: k must be an int >= 1, got 0"):
    knn_sweep(x, y, tx, ty, num_classes=5, ks=(10, 0))


@pytest.mark.parametrize("sweep, message", [
    ((10, 0), r"eval.knn_k_sweep must be integers >= 1 like \(10, 20, 100, 200\)"),
    ((-5,), r"eval.knn_k_sweep must be integers >= 1"),
    (("a",), r"eval.knn_k_sweep must be a tuple of numbers"),
    ((), None),  # off
])
def test_sweep_setting_is_validated(sweep, message):
  config = common.get_config()
  config.eval.knn_k_sweep = sweep
  if message is None:
    experiment.validate_config(config)
    return
  with pytest.raises(ConfigError, match=message) as error:
    experiment.validate_config(config)
  assert "\n" not in str(error.value)


def test_evaluator_reports_the_headline_and_each_swept_k():
  train_x, train_y, test_x, test_y = random_problem(2, num_classes=10)
  features = SplitFeatures(train=(train_x, train_y), test=(test_x, test_y))
  results = KnnEvaluator(num_classes=10, k=200, temperature=0.1, k_sweep=(10, 20))(features)
  assert set(results) == {"knn_top1", "knn_top5", "knn_top1_k10", "knn_top5_k10",
                          "knn_top1_k20", "knn_top5_k20"}
  sweep = knn_sweep(train_x, train_y, test_x, test_y, num_classes=10, ks=(200, 10, 20))
  assert (results["knn_top1"], results["knn_top5"]) == (sweep[200]["top1"], sweep[200]["top5"])
  assert (results["knn_top1_k10"], results["knn_top5_k20"]) == (sweep[10]["top1"],
                                                                sweep[20]["top5"])
  # Without a sweep: the keys results.json always had.
  assert set(KnnEvaluator(num_classes=10, k=200, temperature=0.1)(features)) == {
      "knn_top1", "knn_top5"}
