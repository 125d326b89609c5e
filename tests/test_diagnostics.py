"""rwl_jax.diagnostics against float64 NumPy on known inputs, and its row-sharded p_pos."""

from __future__ import annotations

import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_on_devices
from rwl_jax import diagnostics, losses

# Jitted once per input shape: checks that each diagnostic is jittable, and one compilation per call
# is much faster than running the functions op by op.
_temperature = {"static_argnames": "temperature"}
positive_probabilities = jax.jit(diagnostics.positive_probabilities, **_temperature)
contrastive_statistics = jax.jit(diagnostics.contrastive_statistics, **_temperature)
effective_rank = jax.jit(diagnostics.effective_rank)
alignment = jax.jit(diagnostics.alignment, static_argnames="alpha")
uniformity = jax.jit(diagnostics.uniformity, static_argnames="t")
random_walk_laplacian_spectrum = jax.jit(diagnostics.random_walk_laplacian_spectrum, **_temperature)
laplacian_band_counts = jax.jit(diagnostics.laplacian_band_counts, **_temperature)
probe_diagnostics = jax.jit(diagnostics.probe_diagnostics, **_temperature)
rwl_loss = jax.jit(losses.rwl_loss, **_temperature)


def _views(batch_size, dim, seed=0, noise=None):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(batch_size, dim))
  z2 = rng.normal(size=(batch_size, dim)) if noise is None else z1 + noise * rng.normal(
      size=(batch_size, dim))
  return np.float32(z1), np.float32(z2)


def _normalize(z):
  z = np.asarray(z, np.float64)
  return z / np.linalg.norm(z, axis=1, keepdims=True)


def _numpy_similarity_graph(z1, z2, temperature):
  """(S, P) in float64: S_ij = exp(z_hat_i.z_hat_j / tau) off the diagonal, P = D^-1 S."""
  z = _normalize(np.concatenate([z1, z2]))
  logits = z @ z.T / temperature
  np.fill_diagonal(logits, -np.inf)
  # A common shift keeps S symmetric and finite at any tau; it cancels in P and in Ncut.
  similarity = np.exp(logits - logits[np.isfinite(logits)].max())
  return similarity, similarity / similarity.sum(axis=1, keepdims=True)


def _numpy_positive_probabilities(z1, z2, temperature):
  _, transition = _numpy_similarity_graph(z1, z2, temperature)
  rows = np.arange(transition.shape[0])
  return transition[rows, (rows + len(z1)) % len(rows)]


def _simplex(num_points):
  """num_points unit vectors in R^(num_points-1) with pairwise cosine -1/(num_points-1)."""
  centred = np.eye(num_points) - 1.0 / num_points
  u, s, _ = np.linalg.svd(centred)
  return _normalize(u[:, :num_points - 1] * s[:num_points - 1])


def test_positive_probabilities_and_statistics_match_numpy():
  z1, z2 = _views(8, 16, noise=0.5)
  tau = 0.3
  expected = _numpy_positive_probabilities(z1, z2, tau)
  np.testing.assert_allclose(positive_probabilities(z1, z2, tau), expected, rtol=1e-5)

  stats = contrastive_statistics(z1, z2, tau)
  np.testing.assert_allclose(stats["p_pos"], expected.mean(), rtol=1e-5)
  np.testing.assert_allclose(stats["ncut_bound"], np.sum(1 - expected), rtol=1e-5)
  eps = 2 * 7 * math.exp(-8 / (7 * tau))
  np.testing.assert_allclose(stats["p_pos_ceiling"], 1 / (1 + eps), rtol=1e-6)

  # theory.md R4: Ncut of the instance partition <= sum_i (1 - p_i) <= sqrt(N rwl).
  similarity, _ = _numpy_similarity_graph(z1, z2, tau)
  degree = similarity.sum(axis=1)
  ncut = 0.0
  for image in range(8):
    members = [image, image + 8]
    outside = [j for j in range(16) if j not in members]
    ncut += similarity[np.ix_(members, outside)].sum() / degree[members].sum()
  assert ncut <= float(stats["ncut_bound"]) * (1 + 1e-6)
  assert float(stats["ncut_bound"]) <= math.sqrt(16 * float(rwl_loss(z1, z2, tau)))


def test_simplex_optimum_reaches_the_ceiling():
  # theory.md S2: both views on a regular simplex (d = B - 1) give p_i = p* for every row.
  z = np.float32(_simplex(4))
  for tau in (0.2, 1.0):
    stats = contrastive_statistics(z, z, tau)
    np.testing.assert_allclose(stats["p_pos"], stats["p_pos_ceiling"], rtol=1e-5)


def _numpy_rankme(x):
  singular_values = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
  p = singular_values / singular_values.sum() + 1e-7
  return math.exp(-np.sum(p * np.log(p)))


def test_effective_rank():
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(64, 3)))
  v, _ = np.linalg.qr(rng.normal(size=(16, 3)))
  rank3 = np.float32(5.0 * u @ v.T)  # three equal singular values
  np.testing.assert_allclose(effective_rank(rank3), 3.0, rtol=1e-3)
  np.testing.assert_allclose(effective_rank(np.ones((64, 16), np.float32)), 1.0,
                             rtol=1e-3)
  np.testing.assert_allclose(effective_rank(np.zeros((64, 16), np.float32)), 1.0,
                             rtol=1e-3)
  isotropic = np.float32(rng.normal(size=(512, 16)))
  assert 0.98 * 16 < float(effective_rank(isotropic)) <= 16
  skewed = np.float32(rng.normal(size=(32, 8)) * np.geomspace(1, 100, 8))
  np.testing.assert_allclose(effective_rank(skewed), _numpy_rankme(skewed), rtol=1e-5)


def test_alignment():
  z1, z2 = _views(8, 5, noise=0.3)
  assert float(alignment(z1, z1)) == 0.0
  expected = np.sum(np.square(_normalize(z1) - _normalize(z2)), axis=1)
  np.testing.assert_allclose(alignment(z1, z2), expected.mean(), rtol=1e-5)
  np.testing.assert_allclose(alignment(z1, z2, alpha=1), np.sqrt(expected).mean(),
                             rtol=1e-5)
  # Orthogonal unit vectors are sqrt(2) apart; scale does not matter.
  e1, e2 = np.float32([[3.0, 0.0]]), np.float32([[0.0, 0.5]])
  np.testing.assert_allclose(alignment(e1, e2), 2.0, rtol=1e-6)


def test_uniformity():
  collapsed = np.tile(np.float32([[0.3, -1.2, 2.0]]), (6, 1))
  assert float(uniformity(collapsed)) == 0.0
  antipodal = np.float32([[1.0, 2.0], [-1.0, -2.0]])
  np.testing.assert_allclose(uniformity(antipodal), -8.0, rtol=1e-6)
  # Regular simplex of n points: every squared distance is 2 + 2/(n - 1).
  np.testing.assert_allclose(uniformity(np.float32(_simplex(5)), t=1.5),
                             -1.5 * (2 + 2 / 4), rtol=1e-5)
  z, _ = _views(10, 4)
  unit = _normalize(z)
  squared = np.sum(np.square(unit[:, None] - unit[None]), axis=-1)
  expected = np.log(np.exp(-2 * squared)[~np.eye(10, dtype=bool)].mean())
  np.testing.assert_allclose(uniformity(z), expected, rtol=1e-5)


def _numpy_laplacian_spectrum(z1, z2, temperature):
  _, transition = _numpy_similarity_graph(z1, z2, temperature)
  eigenvalues = np.linalg.eigvals(np.eye(len(transition)) - transition)
  assert np.max(np.abs(eigenvalues.imag)) < 1e-8  # similar to a symmetric matrix: real
  return np.sort(eigenvalues.real)


def test_laplacian_band_counts_near_solved():
  z1, z2 = _views(8, 16, noise=0.05)
  bands = laplacian_band_counts(z1, z2, 0.1)
  assert float(bands["rwl"]) < 1  # the regime of theory.md R5
  assert int(bands["low_band"]) == 8 and int(bands["high_band"]) == 8
  np.testing.assert_allclose(random_walk_laplacian_spectrum(z1, z2, 0.1),
                             _numpy_laplacian_spectrum(z1, z2, 0.1), atol=1e-4)


@pytest.mark.parametrize("tau", [0.5, 0.005])
def test_laplacian_spectrum_unsolved_and_cold(tau):
  # 1/tau = 200 overflows exp in float32: the spectrum must come from log P alone.
  z1, z2 = _views(6, 4, seed=1, noise=1.0)
  np.testing.assert_allclose(random_walk_laplacian_spectrum(z1, z2, tau),
                             _numpy_laplacian_spectrum(z1, z2, tau), atol=1e-4)


def test_probe_diagnostics_is_everything_in_one_jitted_call():
  z1, z2 = _views(8, 16, noise=0.05)
  features = np.float32(np.random.default_rng(2).normal(size=(16, 32)))
  out = probe_diagnostics(features, z1, z2, temperature=0.1)
  assert set(out) == {"p_pos", "p_pos_ceiling", "ncut_bound", "rank_projections", "rank_features",
                      "alignment", "uniformity", "probe_rwl", "lrw_low_band", "lrw_high_band"}
  assert all(v.shape == () and v.dtype == jnp.float32 for v in out.values())
  p = _numpy_positive_probabilities(z1, z2, 0.1)
  np.testing.assert_allclose(out["p_pos"], p.mean(), rtol=1e-5)
  np.testing.assert_allclose(out["ncut_bound"], np.sum(1 - p), rtol=1e-4)
  np.testing.assert_allclose(out["rank_projections"], _numpy_rankme(np.concatenate([z1, z2])),
                             rtol=1e-5)
  np.testing.assert_allclose(out["rank_features"], _numpy_rankme(features), rtol=1e-5)
  np.testing.assert_allclose(out["alignment"], alignment(z1, z2), rtol=1e-6)
  np.testing.assert_allclose(
      out["uniformity"], (uniformity(z1) + uniformity(z2)) / 2, rtol=1e-6)
  np.testing.assert_allclose(out["probe_rwl"], rwl_loss(z1, z2, 0.1), rtol=1e-6)
  assert float(out["lrw_low_band"]) == 8.0 and float(out["lrw_high_band"]) == 8.0


# Runs in a fresh process: the device count is fixed when JAX starts.
_SHARDED_SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from rwl_jax import diagnostics, losses

    assert jax.device_count() == 4
    mesh = jax.make_mesh((4,), ("data",))
    rng = np.random.default_rng(0)
    z1, z2 = (np.float32(rng.normal(size=(16, 8))) for _ in range(2))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    z1s, z2s = (jax.device_put(z, sharding) for z in (z1, z2))
    total = losses.row_sharded_sum(diagnostics.positive_probability_row_terms, mesh, "data")
    out = []
    for tau in (0.1, 0.5):
      sharded = jax.jit(lambda a, b: total(a, b, tau) / (2 * a.shape[0]))(z1s, z2s)
      whole = diagnostics.contrastive_statistics(z1, z2, tau)["p_pos"]
      out.append([tau, float(whole), float(sharded)])
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_row_sharded_p_pos_matches_whole_batch():
  for tau, whole, sharded in run_on_devices(_SHARDED_SCRIPT, devices=4, timeout=300):
    assert abs(whole - sharded) <= 1e-6 * abs(whole), (tau, whole, sharded)
