"""Linear probe: separable blobs are learned, random labels are not, standardisation, seeds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwl_jax import online_probe
from rwl_jax.evaluate import linear_probe, linear_probe_top1

NUM_CLASSES, DIM = 10, 64


def blobs(seed, num_train=1000, num_test=500, separation=1.0):
  """Gaussian blobs: class means N(0, separation^2 I), unit within-class noise."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(NUM_CLASSES, DIM)) * separation
  train_y = rng.integers(0, NUM_CLASSES, num_train)
  test_y = rng.integers(0, NUM_CLASSES, num_test)
  return (means[train_y] + rng.normal(size=(num_train, DIM)), train_y,
          means[test_y] + rng.normal(size=(num_test, DIM)), test_y)


def probe(train_x, train_y, test_x, test_y, **kwargs):
  kwargs = dict(dict(num_classes=NUM_CLASSES, epochs=20, batch_size=96), **kwargs)
  return linear_probe_top1(train_x, train_y, test_x, test_y, **kwargs)


def test_separable_blobs_are_learned():
  # 1000 / 96 leaves a partial last batch of 40 rows every epoch.
  accuracy = probe(*blobs(0))
  assert isinstance(accuracy, float)
  assert accuracy >= 0.95


def test_random_labels_stay_at_chance():
  rng = np.random.default_rng(1)
  train_x, _, test_x, _ = blobs(1)
  accuracy = probe(train_x, rng.integers(0, NUM_CLASSES, len(train_x)), test_x,
                   rng.integers(0, NUM_CLASSES, len(test_x)))
  assert abs(accuracy - 1 / NUM_CLASSES) < 0.06  # ~4.5 standard errors of 500 Bernoulli(0.1)


def test_same_seed_same_result_and_the_seed_is_used():
  # Overlapping blobs, few epochs at a high rate: the result depends on the shuffling order.
  data = blobs(2, separation=0.25)
  kwargs = dict(epochs=2, batch_size=32, learning_rate=1.0)
  first = probe(*data, seed=3, **kwargs)
  assert probe(*data, seed=3, **kwargs) == first
  assert len({probe(*data, seed=seed, **kwargs) for seed in (3, 4, 5, 6)}) > 1


def test_large_offset_and_scale_are_standardised():
  train_x, train_y, test_x, test_y = blobs(4)
  reference = probe(train_x, train_y, test_x, test_y)
  # Per-feature scales from 1e-3 to 1e4 plus an offset of 1e4: raw SGD at lr 0.1 would diverge.
  rng = np.random.default_rng(4)
  scale = np.logspace(-3, 4, DIM)[rng.permutation(DIM)]
  transform = lambda x: (x * scale + 1e4).astype(np.float32)
  accuracy = probe(transform(train_x), train_y, transform(test_x), test_y)
  assert accuracy >= 0.95
  assert abs(accuracy - reference) <= 0.02


def test_constant_features_do_not_break_standardisation():
  train_x, train_y, test_x, test_y = blobs(5)
  # sigma = 0 on the train split but not on the test split. Values that a float32 sum cannot
  # average exactly: a naive mean leaves sigma ~ 1e-7 and blows the test column up by 1e7.
  train_x[:, :3] = [0.1, 7.3, 1e4 + 0.3]
  assert probe(train_x, train_y, test_x, test_y) >= 0.95


def test_test_split_is_standardised_with_train_statistics():
  # Shifting only the test features by 50 train standard deviations must hurt: statistics of the
  # test split itself would undo the shift.
  train_x, train_y, test_x, test_y = blobs(6)
  shifted = test_x + 50.0 * train_x.std(axis=0)
  assert probe(train_x, train_y, shifted, test_y) < 0.5


def test_last_partial_batch_is_masked():
  # 1001 rows in batches of 1000: every other step has 1 real row and 999 padded slots. Padded
  # slots that leaked into the loss would train on one row most of the time.
  train_x, train_y, test_x, test_y = blobs(8, num_train=1001)
  assert probe(train_x, train_y, test_x, test_y, batch_size=1000, epochs=30) >= 0.95


def test_weight_decay_skips_the_bias():
  tx = linear_probe._make_optimizer(0.1, 0.5, total_steps=10)  # pylint: disable=protected-access
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  assert np.all(np.asarray(updates["w"]) < 0)
  np.testing.assert_array_equal(updates["b"], 0.0)


def test_optimizer_is_sgd_momentum_with_cosine_decay():
  # Constant gradient 1, no decay: trace_t = 1 + 0.9 trace_{t-1}, update_t = -lr_t trace_t with
  # lr_t = 0.1 (1 + cos(pi t / T)) / 2.
  total = 10
  tx = linear_probe._make_optimizer(0.1, 0.0, total_steps=total)  # pylint: disable=protected-access
  params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros((2,))}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  trace = 0.0
  for t in range(total):
    updates, state = tx.update(grads, state, params)
    trace = 1.0 + 0.9 * trace
    expected = -0.1 * (1 + np.cos(np.pi * t / total)) / 2 * trace
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(updates["b"], expected, rtol=1e-5, atol=1e-7)


def test_weight_decay_regularises():
  # A huge decay pins W near 0, so the logits are the bias alone: about chance.
  data = blobs(7)
  assert probe(*data, weight_decay=0.0) >= 0.95
  assert probe(*data, weight_decay=1e3, learning_rate=1e-3) < 0.3


def _bad_inputs():
  x, y, tx, ty = blobs(0, num_train=30, num_test=10)
  ok = dict(train_features=x, train_labels=y, test_features=tx, test_labels=ty,
            num_classes=NUM_CLASSES)
  return [
      (dict(ok, train_labels=y[:-1]), r"train_features has 30 rows but train_labels has 29"),
      (dict(ok, test_features=tx[:, :-1]), r"feature dims differ.*64.*63"),
      (dict(ok, test_labels=np.where(ty == 0, NUM_CLASSES, ty)), r"test_labels must lie in"),
      (dict(ok, train_labels=y - 1), r"train_labels must lie in \[0, num_classes=10\)"),
      (dict(ok, epochs=0), r"epochs must be an int >= 1"),
      (dict(ok, batch_size=0), r"batch_size must be an int >= 1"),
      (dict(ok, learning_rate=0.0), r"learning_rate must be a number > 0"),
      (dict(ok, weight_decay=-1e-4), r"weight_decay must be a number >= 0"),
      (dict(ok, train_features=np.where(x > 2, np.inf, x)), r"train_features contains NaN or inf"),
      (dict(ok, test_labels=ty.astype(float)), r"test_labels must be integers"),
  ]


@pytest.mark.parametrize("kwargs, message", _bad_inputs())
def test_invalid_input_raises_value_error_naming_the_problem(kwargs, message):
  with pytest.raises(ValueError, match=message) as error:
    linear_probe_top1(**kwargs)
  assert "\n" not in str(error.value)
  assert str(error.value).startswith("linear_probe_top1: ")


def test_top_k_correct_matches_numpy_with_ties_and_padding():
  # The one top-k rule of kNN, the linear and online probes and fine-tuning.
  rng = np.random.default_rng(4)
  scores = rng.integers(0, 4, (200, 8)).astype(np.float32)  # many exact ties
  labels = rng.integers(0, 8, 200)
  mask = rng.random(200) < 0.8
  order = np.argsort(-scores, axis=1, kind="stable")  # ties: the smaller class first
  expected1 = np.sum((order[:, 0] == labels) & mask)
  expected5 = np.sum(np.any(order[:, :5] == labels[:, None], axis=1) & mask)
  top1, top5 = online_probe.top_k_correct(jnp.asarray(scores), jnp.asarray(labels), k=5,
                                          mask=jnp.asarray(mask))
  assert (int(top1), int(top5)) == (expected1, expected5)
  # Fewer classes than k: every class counts, so top-k is every real row.
  _, every = online_probe.top_k_correct(jnp.asarray(scores[:, :3]), jnp.asarray(labels % 3), k=5)
  assert int(every) == 200


def test_top5_beside_top1():
  data = blobs(5, separation=0.3)  # overlapping: top-1 well below 1, top-5 above it
  accuracy = linear_probe.linear_probe_accuracy(*data, num_classes=NUM_CLASSES, epochs=10,
                                                batch_size=96)
  assert set(accuracy) == {"top1", "top5"}
  assert 0.2 < accuracy["top1"] < accuracy["top5"] < 1.0, accuracy
  assert accuracy["top1"] == probe(*data, epochs=10)
