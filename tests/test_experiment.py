"""The experiment builder: one place builds the step, its random streams, and the one compiled
feature function every evaluation shares."""

import jax
import numpy as np
import pytest

from conftest import tiny_config
from rwl_jax.run import experiment
from rwl_jax import parallel, rng
from rwl_jax.data import inputs
from rwl_jax.evaluate.evaluators import FeatureExtractor, build_evaluators, run_evaluators

def load(config):
  """The config's data as a run reads it (its data section; labels checked for the online probe)."""
  return inputs.load_data(config.data, train_labels=config.eval.online_probe)



def test_device_step_gives_each_consumer_its_own_stream(monkeypatch):
  """GSG's pairing and the two device views draw from three different named streams (before,
  the views were fold_in(k, 0|1) and the pairing k itself, k = fold_in(key(seed), step))."""
  config = tiny_config("unused", "unused", method="byol_gsg")
  config.global_batch_size = 8
  config.model.width = 4
  config.data.augment_on = "device"
  built = experiment.build(config, parallel.make_mesh(), steps_per_epoch=2)
  used = []
  real = rng.stream_key
  monkeypatch.setattr(rng, "stream_key", lambda seed, step, name: used.append(name) or real(
      seed, step, name))
  images = jax.ShapeDtypeStruct((jax.device_count(), 16, 32, 32, 3), np.uint8)
  indices = jax.ShapeDtypeStruct((8,), np.int32)
  jax.eval_shape(built.jitted_step, built.abstract_state(), {"image": images}, indices)
  assert sorted(used) == ["method", "view1", "view2"]


@pytest.fixture(scope="module")
def tiny_run(cifar_dir, tmp_path_factory):
  config = tiny_config(cifar_dir, tmp_path_factory.mktemp("cache"))
  config.data.max_train_examples = 64
  config.data.max_eval_examples = 32
  config.eval.batch_size = 32
  data = load(config)
  built = experiment.build(config, parallel.make_mesh(), steps_per_epoch=2)
  return config, data, built


def test_evaluations_share_one_compiled_feature_function(tiny_run):
  config, data, built = tiny_run
  state = built.init_state()
  extractor = FeatureExtractor(built, data)
  evaluators = build_evaluators(config.eval, num_classes=len(data.class_names), seed=config.seed)
  first = run_evaluators(evaluators[:1], extractor, state)
  second = run_evaluators(evaluators[:1], FeatureExtractor(built, data), state)
  assert first == second and {"knn_top1", "knn_top5"} <= set(first)
  assert set(first) - {"knn_top1", "knn_top5"} == {  # the default eval.knn_k_sweep
      f"knn_top{t}_k{k}" for t in (1, 5) for k in config.eval.knn_k_sweep}
  assert 0 <= first["knn_top1"] <= first["knn_top5"] <= 1
  # Train and test batches have one shape: one executable for every evaluation of the run.
  assert built.features._cache_size() == 1  # pylint: disable=protected-access


def test_probe_diagnostics_of_the_initial_network(tiny_run):
  config, data, built = tiny_run
  probe = inputs.probe_images(data, 16, built.mesh)
  state = built.init_state()
  values = parallel.fetch(built.probe(state.params, state.batch_stats, probe))
  assert set(values) >= {"p_pos", "p_pos_ceiling", "ncut_bound", "rank_projections",
                         "rank_features", "alignment", "uniformity", "probe_rwl",
                         "lrw_low_band", "lrw_high_band"}
  assert 0 < values["p_pos"] < 1 and values["p_pos_ceiling"] < 1
  # A fixed batch and fixed views: the same network gives the same numbers.
  again = parallel.fetch(built.probe(state.params, state.batch_stats, probe))
  assert again == values


def test_probe_batch_size_must_leave_two_images_per_device(tiny_run):
  _, data, built = tiny_run
  from rwl_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="probe_batch_size=1 leaves fewer than 2 images"):
    inputs.probe_images(data, 1, built.mesh)


@pytest.mark.parametrize("method, aux", [
    ("rwl", set()), ("simclr", set()), ("byol", {"ema_momentum"}), ("simsiam", set()),
    ("byol_gsg", {"ema_momentum", "gsg_swap_rate"}), ("simsiam_gsg", {"gsg_swap_rate"}),
    ("vicreg", {"vicreg_invariance", "vicreg_variance", "vicreg_covariance"}),
    ("barlow", {"barlow_on_diagonal", "barlow_off_diagonal"}),
])
def test_each_registered_method_logs_its_aux_terms(method, aux):
  from rwl_jax import methods  # pylint: disable=g-import-not-at-top

  assert method in methods.REGISTRY
  config = tiny_config("unused", "unused", method=method)
  config.global_batch_size = 8
  config.model.width = 4
  built = experiment.build(config, parallel.make_mesh(), steps_per_epoch=2)
  _, metrics = jax.eval_shape(built.train_step, built.abstract_state(),
                              *built.host_inputs_spec())
  assert set(metrics) == {"loss", "grad_norm", "representation_std"} | aux
  assert all(value.shape == () for value in metrics.values())


def test_vicreg_and_barlow_aux_terms_add_up_to_the_loss():
  from rwl_jax import losses, methods  # pylint: disable=g-import-not-at-top

  z1, z2 = (jax.random.normal(jax.random.key(i), (16, 8)) for i in (1, 2))
  outputs, key = methods.Outputs(z1, z2), jax.random.key(0)
  config = tiny_config("unused", "unused", method="vicreg")
  loss, aux = methods.get(config).loss(outputs, (z1, z2), key)
  np.testing.assert_allclose(loss, losses.vicreg_loss(z1, z2), rtol=1e-6)
  v = config.vicreg
  np.testing.assert_allclose(loss, v.sim_coeff * aux["vicreg_invariance"]
                             + v.std_coeff * aux["vicreg_variance"]
                             + v.cov_coeff * aux["vicreg_covariance"], rtol=1e-6)
  config = tiny_config("unused", "unused", method="barlow")
  config.barlow.scale = 0.1
  loss, aux = methods.get(config).loss(outputs, (z1, z2), key)
  np.testing.assert_allclose(loss, 0.1 * losses.barlow_twins_loss(z1, z2), rtol=1e-6)
  np.testing.assert_allclose(loss, 0.1 * (aux["barlow_on_diagonal"]
                                          + config.barlow.lambd * aux["barlow_off_diagonal"]),
                             rtol=1e-6)
