"""The method zoo: EMA target, stop-gradients, GSG pairing, and every method end to end."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from rwl_jax.configs import common
from rwl_jax.run import experiment
from rwl_jax import losses, methods, parallel, train
from rwl_jax.rng import stream_key
from rwl_jax.errors import ConfigError

NEW_METHODS = ("byol", "byol_gsg", "simsiam", "simsiam_gsg", "vicreg", "barlow")


def _config(method):
  config = common.get_config()
  config.method = method
  config.global_batch_size = 8
  config.model.width = 4
  config.model.projector_dims = (16, 8)
  config.model.predictor_dims = (16, 8)
  config.ema.base_momentum = 0.9  # far from 1, so the EMA visibly mixes in the online weights
  return config


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=(8, 32, 32, 3)).astype(np.float32) for k in ("view1", "view2")}


@pytest.fixture(scope="module")
def byol_gsg_step():
  """One compiled BYOL+GSG step (EMA target and random pairing both), its initial state, a batch."""
  config = _config("byol_gsg")
  mesh = parallel.make_mesh(jax.devices()[:1])
  config.num_epochs = 10
  built = experiment.build(config, mesh, steps_per_epoch=2)  # 20 steps: K of the EMA schedule
  state, step_fn, step = built.init_state(), built.train_step, built.jitted_step
  host_state = jax.device_get(state)  # the step donates its input; keep a host copy to restart
  return step, step_fn, host_state, parallel.to_global(_batch(), mesh), mesh


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_momentum_schedule():
  assert float(methods.ema_momentum(0, 100, 0.99)) == pytest.approx(0.99)
  assert float(methods.ema_momentum(50, 100, 0.99)) == pytest.approx(0.995)
  assert float(methods.ema_momentum(100, 100, 0.99)) == pytest.approx(1.0)
  k = 30
  expected = 1 - (1 - 0.99) * (math.cos(math.pi * k / 100) + 1) / 2
  assert float(methods.ema_momentum(k, 100, 0.99)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow  # compiles a whole train step and its gradient
def test_byol_target_is_the_ema_of_the_updated_online_weights(byol_gsg_step):
  step, step_fn, host_state, batch, _ = byol_gsg_step
  state0 = jax.device_put(host_state)
  # The target starts as an exact copy of the online network.
  for t, o in zip(_leaves(host_state.target_params), _leaves(host_state.params)):
    np.testing.assert_array_equal(t, o)
  # Two steps, so the target and the online weights differ before the checked update.
  state1, _ = step(state0, batch)
  before = jax.device_get(state1)
  state2, metrics = step(state1, batch)
  after = jax.device_get(state2)
  m = 1 - (1 - 0.9) * (math.cos(math.pi * 1 / 20) + 1) / 2  # m(k) at k = 1 of K = 20
  assert float(metrics["ema_momentum"]) == pytest.approx(m, rel=1e-6)
  changed = 0
  for old_t, new_o, new_t, old_o in zip(_leaves(before.target_params), _leaves(after.params),
                                        _leaves(after.target_params), _leaves(before.params)):
    # BYOL: the EMA mixes in the online weights AFTER this step's update, not before.
    np.testing.assert_allclose(new_t, m * old_t + (1 - m) * new_o, rtol=1e-5, atol=1e-7)
    changed += not np.allclose(new_o, old_o)
  assert changed > 0

  # The target is not differentiated: the step's loss has zero gradient w.r.t. its weights.
  # (The whole state is the argument, so every nnx Variable lives at the grad's trace level.)
  state_grad = jax.jit(jax.grad(lambda s: step_fn(s, batch)[1]["loss"], allow_int=True))(
      jax.device_put(before))
  target_grad = state_grad.target_params
  assert any(np.abs(g).sum() > 0 for g in _leaves(state_grad.params))  # the check can fail
  assert all(np.all(g == 0) for g in _leaves(target_grad))


@pytest.mark.parametrize("method", ["simsiam", "simsiam_gsg", "byol", "byol_gsg"])
def test_no_gradient_through_the_target_branch(method):
  loss = methods.get(_config(method)).loss
  rng = np.random.default_rng(0)
  z1, z2, p1, p2 = (jnp.asarray(rng.normal(size=(6, 5)), jnp.float32) for _ in range(4))
  key = jax.random.key(3)

  def of(z1, z2, p1, p2):
    # SimSiam passes the online projections as the targets: the same arrays as online z.
    return loss(methods.Outputs(z1, z2, p1, p2), (z1, z2), key)[0]

  grads = jax.grad(of, argnums=(0, 1, 2, 3))(z1, z2, p1, p2)
  assert np.all(np.asarray(grads[0]) == 0) and np.all(np.asarray(grads[1]) == 0)
  assert np.abs(np.asarray(grads[2])).sum() > 0 and np.abs(np.asarray(grads[3])).sum() > 0


def _gsg_reference(p1, p2, t1, t2, perm, assignment):
  """-1/2 mean [cos(p(a_src), a_tgt) + cos(p(b_src), b_tgt)], in NumPy."""
  cos = lambda x, y: np.sum(x * y, -1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)
  p, t = np.stack([p1, p2]), np.stack([t1, t2])
  rows = np.arange(len(perm))
  ia, ib = assignment[:, 0], assignment[:, 1]
  a = cos(p[ia, rows], t[1 - ia, rows])
  b = cos(p[ib, perm], t[1 - ib, perm])
  return float(-0.5 * np.mean(a) - 0.5 * np.mean(b))


def test_gsg_pairing_matches_gsg_assignment_on_hand_built_embeddings():
  # Four images' two views at distinct offsets, so the closest cross pair differs by row.
  t1 = np.array([[1., 1.], [11., 1.], [1., 11.], [11., 11.]], np.float32)
  t2 = np.array([[2., 1.], [11., 3.], [1., 14.], [14., 11.]], np.float32)
  key = jax.random.key(7)
  perm, assignment = methods.gsg_pairing(key, jnp.asarray(t1), jnp.asarray(t2))
  perm, assignment = np.asarray(perm), np.asarray(assignment)
  np.testing.assert_array_equal(perm, np.asarray(jax.random.permutation(key, 4)))
  assert sorted(perm) == [0, 1, 2, 3] and not np.array_equal(perm, np.arange(4))
  # Brute force: per row, argmin over (1,1), (1,2), (2,1), (2,2) of ||a_i - b_j||.
  for r in range(4):
    a, b = (t1[r], t2[r]), (t1[perm[r]], t2[perm[r]])
    dist = [np.linalg.norm(a[i] - b[j]) for i in (0, 1) for j in (0, 1)]
    best = int(np.argmin(dist))
    assert tuple(assignment[r]) == (best // 2, best % 2), (r, dist, assignment[r])
  np.testing.assert_array_equal(assignment, np.asarray(losses.gsg_assignment(
      t1, t2, t1[perm], t2[perm])))

  rng = np.random.default_rng(1)
  p1, p2 = (rng.normal(size=(4, 2)).astype(np.float32) for _ in range(2))
  loss = methods.get(_config("simsiam_gsg")).loss(
      methods.Outputs(jnp.asarray(t1), jnp.asarray(t2), jnp.asarray(p1), jnp.asarray(p2)),
      (jnp.asarray(t1), jnp.asarray(t2)), key)[0]
  assert float(loss) == pytest.approx(_gsg_reference(p1, p2, t1, t2, perm, assignment), abs=1e-6)
  # The pairing matters: the swapped sources give another loss, so the check above can fail.
  assert float(loss) != pytest.approx(_gsg_reference(p1, p2, t1, t2, perm, 1 - assignment),
                                      abs=1e-4)


def test_gsg_permutation_depends_on_step_and_repeats_on_resume(byol_gsg_step):
  perms = [np.asarray(jax.random.permutation(stream_key(0, s, "method"), 64)) for s in (0, 1, 0)]
  assert not np.array_equal(perms[0], perms[1])
  np.testing.assert_array_equal(perms[0], perms[2])

  step, _, host_state, batch, _ = byol_gsg_step
  # Straight through: two steps.
  state, first = step(jax.device_put(host_state), batch)
  state, second = step(state, batch)
  straight = jax.device_get((state, second))
  # Interrupted: one step, to host memory and back (a checkpoint round trip), then the second.
  state, again = step(jax.device_put(host_state), batch)
  state, resumed = step(jax.device_put(jax.device_get(state)), batch)
  assert float(again["loss"]) == float(first["loss"])
  assert float(resumed["loss"]) == float(straight[1]["loss"])
  for a, b in zip(_leaves(straight[0]), _leaves(jax.device_get(state))):
    np.testing.assert_array_equal(a, b)
  # The same weights at another step number draw another pairing, hence another loss.
  _, other = step(jax.device_put(host_state.replace(step=jnp.asarray(5, jnp.int32))), batch)
  assert float(other["loss"]) != float(first["loss"])


@pytest.mark.parametrize("method, field, value, message", [
    ("byol", "model.predictor_dims", (16, 4), "predictor_dims must end with"),
    ("simsiam", "model.predictor_dims", (), "predictor_dims must be a non-empty"),
    ("byol_gsg", "ema.base_momentum", 1.5, r"ema.base_momentum must be in \[0, 1\]"),
    ("vicreg", "vicreg.std_coeff", -1.0, "vicreg.std_coeff must be >= 0"),
    ("vicreg", "vicreg.epsilon", 0.0, "vicreg.epsilon must be > 0"),
    ("barlow", "barlow.lambd", -0.1, "barlow.lambd must be >= 0"),
    ("barlow", "barlow.scale", 0.0, "barlow.scale must be > 0"),
])
def test_invalid_hyper_parameters(method, field, value, message):
  config = _config(method)
  experiment.validate_config(config)  # valid before the change
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ConfigError, match=message) as error:
    experiment.validate_config(config)
  assert "\n" not in str(error.value)


def test_unknown_method_lists_all_methods():
  with pytest.raises(ConfigError) as error:
    experiment.validate_config(_config("moco"))
  for name in ("rwl", "simclr", *NEW_METHODS):
    assert repr(name) in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("method", NEW_METHODS)
def test_trains_end_to_end(method, cifar_dir, tmp_path):
  config = tiny_config(cifar_dir, tmp_path / "cache", method=method)
  config.num_epochs = 1
  config.data.max_train_examples = 96  # 3 steps of 32
  config.model.width = 4
  config.eval.linear_epochs = 2
  config.log_every_steps = 1
  workdir = tmp_path / "work"
  results = train.train_and_evaluate(config, str(workdir))
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps_losses = [(l["step"], l["loss"]) for l in lines if "loss" in l]
  assert [s for s, _ in steps_losses] == [1, 2, 3]
  assert all(np.isfinite(loss) for _, loss in steps_losses), steps_losses
  assert results["method"] == method and results["steps"] == 3
  # The final kNN: a count of the test images over their number, top-5 at least top-1, and the
  # figure the run logged.
  correct = results["knn_top1"] * results["test_examples"]
  assert correct == pytest.approx(round(correct), abs=1e-6), results["knn_top1"]
  assert 0 <= round(correct) <= results["test_examples"]
  assert results["knn_top5"] >= results["knn_top1"]
  assert [l["knn_top1"] for l in lines if "knn_top1" in l][-1] == results["knn_top1"]
