"""The online linear probe: its update against a hand computation, its independence from the
encoder's update, its test-split evaluation against NumPy, and a run that reports it."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from rwl_jax.run import experiment
from rwl_jax import online_probe, parallel, train
from rwl_jax.errors import ConfigError
from rwl_jax.evaluate.run import evaluate_checkpoint
from rwl_jax.evaluate.evaluators import OnlineProbeEvaluator, SplitFeatures


def separable(num_rows=240, dim=6, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, num_rows)
  centres = 3.0 * rng.normal(size=(classes, dim))
  return (centres[labels] + rng.normal(size=(num_rows, dim))).astype(np.float32), labels


def test_first_update_is_minus_lr_times_the_cross_entropy_gradient():
  features, labels = separable()
  probe = online_probe.OnlineProbe(num_features=6, num_classes=3, learning_rate=0.1)
  params, opt_state = probe.init()
  new_params, _, metrics = probe.update(params, opt_state, jnp.asarray(features),
                                        jnp.asarray(labels))
  # Zero W, b: uniform softmax, so the loss is log C and the gradient f^T (1/C - onehot) / N.
  residual = np.full((len(labels), 3), 1 / 3) - np.eye(3)[labels]
  np.testing.assert_allclose(new_params["w"], -0.1 * features.T @ residual / len(labels),
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(new_params["b"], -0.1 * residual.mean(axis=0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics["online_probe_loss"], math.log(3), rtol=1e-6)


def test_updates_learn_separable_classes_and_pass_no_gradient_to_features():
  features, labels = separable()
  probe = online_probe.OnlineProbe(num_features=6, num_classes=3, learning_rate=0.05)
  params, opt_state = probe.init()
  update = jax.jit(probe.update)
  first = None
  for _ in range(100):
    params, opt_state, metrics = update(params, opt_state, features, labels)
    first = first if first is not None else float(metrics["online_probe_loss"])
  assert float(metrics["online_probe_loss"]) < 0.2 * first
  assert float(metrics["online_probe_top1"]) >= 0.95
  # The probe reads stop-gradient features: nothing of its loss reaches the encoder.
  through = jax.grad(lambda f: probe.update(params, opt_state, f, labels)[2]["online_probe_loss"])
  assert not np.any(np.asarray(through(jnp.asarray(features))))


def test_evaluator_counts_top1_and_top5_like_numpy():
  rng = np.random.default_rng(1)
  test_features = rng.normal(size=(50, 4)).astype(np.float32)
  test_labels = rng.integers(0, 7, 50)
  params = {"w": rng.normal(size=(4, 7)).astype(np.float32),
            "b": rng.normal(size=(7,)).astype(np.float32)}
  state = type("State", (), {"probe_params": jax.tree.map(jnp.asarray, params)})()
  split = SplitFeatures(train=(test_features[:0], test_labels[:0]),
                        test=(test_features, test_labels))
  scores = test_features @ params["w"] + params["b"]
  ranked = np.argsort(-scores, axis=1, kind="stable")
  results = OnlineProbeEvaluator()(split, state)
  assert results["online_top1"] == np.mean(ranked[:, 0] == test_labels)
  assert results["online_top5"] == np.mean(np.any(ranked[:, :5] == test_labels[:, None], axis=1))


@pytest.mark.slow  # compiles two whole train steps
def test_probe_leaves_the_encoder_update_unchanged():
  """The same step with and without the probe moves the network identically; the probe's first
  loss is log(classes) (zero weights)."""
  config = tiny_config("unused", "unused")
  config.global_batch_size = 8
  config.model.width = 4
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  views = {k: rng.normal(size=(8, 32, 32, 3)).astype(np.float32) for k in ("view1", "view2")}
  states = []
  for on in (False, True):
    config.eval.online_probe = on
    built = experiment.build(config, mesh, steps_per_epoch=2, num_classes=10)
    batch = dict(views, label=rng.integers(0, 10, 8).astype(np.int32)) if on else views
    state, metrics = built.jitted_step(built.init_state(), parallel.to_global(batch, mesh))
    states.append(parallel.fetch((state.params, state.batch_stats)))
  for off_leaf, on_leaf in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_array_equal(off_leaf, on_leaf)
  np.testing.assert_allclose(float(metrics["online_probe_loss"]), math.log(10), rtol=1e-6)
  assert parallel.fetch(state.probe_params)["w"].shape == (built.online_probe.num_features, 10)


def test_bad_online_probe_settings_are_one_line_errors():
  config = tiny_config("unused", "unused")
  config.eval.online_probe = True
  config.eval.online_probe_learning_rate = 0.0
  with pytest.raises(ConfigError, match="eval.online_probe_learning_rate must be > 0"):
    experiment.validate_config(config)
  config.eval.online_probe_learning_rate = 0.1
  with pytest.raises(ConfigError, match="eval.online_probe needs the dataset's classes"):
    experiment.build(config, parallel.make_mesh(), steps_per_epoch=2)


@pytest.mark.slow
@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_run_reports_the_online_probe_and_checkpoints_it(augment_on, cifar_dir, tmp_path):
  config = tiny_config(cifar_dir, tmp_path / "cache")
  config.data.max_train_examples = 320  # 10 steps per epoch of 32
  config.data.augment_on = augment_on
  config.eval.online_probe = True
  config.eval.online_probe_every_epochs = 1
  workdir = tmp_path / "work"
  results = train.train_and_evaluate(config, str(workdir))

  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  logged = [row for row in rows if "online_probe_loss" in row]
  assert len(logged) == 4  # every 5 steps over 20
  assert all(np.isfinite(row["online_probe_loss"]) and 0 <= row["online_probe_top1"] <= 1
             for row in logged)
  assert any(row.get("step") == 10 and "online_top1" in row for row in rows)  # after epoch 1
  assert 0 <= results["online_top1"] <= results["online_top5"] <= 1
  # The probe is part of the checkpointed state: the saved run evaluates to the same figure.
  assert evaluate_checkpoint(str(workdir), linear=False)["online_top1"] == results["online_top1"]
