"""RWL's exact facts (docs/theory.md R1-R10; tests T1, T4-T6, T9) and rwl_jax.theory.spectral.

Tolerances: the project losses are float32; identities between float32 quantities use rtol 1e-5
(1e-6 where both sides are the same few operations), inequalities a slack of 1e-5 max(1, rhs).
The theory module is float64 and matches the project's float32 values to 1e-5 relative.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rwl_jax import losses
from rwl_jax.theory import closed_forms
from rwl_jax.theory import spectral


def batch_statistics(z1, z2, temperature):
  """rwl_loss, nt_xent_loss and P of one batch, as the project computes them."""
  probabilities = jnp.exp(losses.log_transition_matrix(jnp.concatenate([z1, z2]), temperature))
  return (losses.rwl_loss(z1, z2, temperature), losses.nt_xent_loss(z1, z2, temperature),
          probabilities)


# One compile per (shape, temperature); vmapped over seeds.
STATISTICS = jax.jit(jax.vmap(batch_statistics, in_axes=(0, 0, None)), static_argnums=2)
RWL_GRAD = jax.jit(jax.grad(losses.rwl_loss), static_argnums=2)
NT_XENT_GRAD = jax.jit(jax.grad(losses.nt_xent_loss), static_argnums=2)
LAPLACIAN = jax.jit(losses.random_walk_laplacian, static_argnums=1)
VICREG_GRAD = jax.jit(jax.grad(losses.vicreg_loss))
BARLOW_GRAD = jax.jit(jax.grad(losses.barlow_twins_loss))
VICREG_TERMS = jax.jit(losses.vicreg_terms)


def noisy_pairs(seeds, batch_size, dim, noise):
  """z1 ~ N(0, 1), z2 = z1 + noise N(0, 1), stacked over seeds, float32."""
  pairs = []
  for seed in seeds:
    rng = np.random.default_rng(seed)
    z1 = rng.normal(size=(batch_size, dim))
    pairs.append((z1, z1 + noise * rng.normal(size=(batch_size, dim))))
  z1, z2 = (np.stack(views).astype(np.float32) for views in zip(*pairs))
  return z1, z2


def positive_probabilities(probabilities):
  num_rows = probabilities.shape[-1]
  return probabilities[..., np.arange(num_rows), spectral.positive_index(num_rows)]


@pytest.mark.parametrize("batch_size", [4, 8])
def test_rwl_identity_sandwich_and_range(batch_size):
  """T1 (R1-R3): RWL = N - 2 sum p + ||P||^2 and
  (N-1)/(N-2) sum (1-p)^2 <= RWL <= 2 sum (1-p)^2 <= 2 sum (1-p) <= 2N NTX, RWL < 2N."""
  z1, z2 = noisy_pairs(range(10), batch_size, 16, 0.5)
  num_rows = 2 * batch_size
  for temperature in (0.1, 0.4, 1.0):
    rwl, nt_xent, probabilities = (np.asarray(v, np.float64) for v in STATISTICS(z1, z2,
                                                                                 temperature))
    p = positive_probabilities(probabilities)
    identity = num_rows - 2 * p.sum(axis=1) + np.sum(np.square(probabilities), axis=(1, 2))
    np.testing.assert_allclose(rwl, identity, rtol=1e-5)
    mass = 1 - p
    chain = [(num_rows - 1) / (num_rows - 2) * np.sum(mass**2, axis=1), rwl,
             2 * np.sum(mass**2, axis=1), 2 * np.sum(mass, axis=1), 2 * num_rows * nt_xent]
    for smaller, larger in zip(chain, chain[1:]):
      assert np.all(smaller <= larger + 1e-5 * np.maximum(1, larger)), temperature
    assert np.all(rwl < 2 * num_rows)
    # The lower end is attained only by uniform negatives, the upper only by one-hot ones: with
    # these batches both inequalities are strict, so an off-by-a-factor bound would fail.
    assert np.all(chain[0] < rwl) and np.all(rwl < chain[2])


def nearest_neighbour_gap(z):
  similarities = z @ z.T / np.outer(np.linalg.norm(z, axis=1), np.linalg.norm(z, axis=1))
  np.fill_diagonal(similarities, -np.inf)
  ordered = np.sort(similarities, axis=1)
  return np.min(ordered[:, -1] - ordered[:, -2]), similarities


def test_temperature_limits():
  """T4 (R7, S4). tau -> 0: RWL -> 2 #(wrong nearest neighbours), 0 <= tau NTX - mean(margin) <=
  tau log(N - 1). tau -> inf: tau (RWL - N(N-2)/(N-1)) -> -2A/(N-1) and
  grad RWL -> (2N/(N-1)) grad NTX (errors O(1/tau): 1e-2 relative at tau = 1e3)."""
  batch_size, dim = 6, 5
  num_rows = 2 * batch_size
  seeds = [seed for seed in range(40)
           if nearest_neighbour_gap(np.concatenate(noisy_pairs([seed], batch_size, dim, 1.0),
                                                   axis=1)[0])[0] >= 0.05][:6]
  z1, z2 = noisy_pairs(seeds, batch_size, dim, 1.0)
  low, high = 0.002, 1e3
  rwl, nt_xent, _ = (np.asarray(v, np.float64) for v in STATISTICS(z1, z2, low))
  errors_total = 0
  for index in range(len(seeds)):
    _, similarities = nearest_neighbour_gap(np.concatenate([z1[index], z2[index]]))
    positive = similarities[np.arange(num_rows), spectral.positive_index(num_rows)]
    errors = np.count_nonzero(np.argmax(similarities, axis=1) != spectral.positive_index(num_rows))
    errors_total += errors
    assert abs(rwl[index] - 2 * errors) <= 1e-4
    margin = np.mean(similarities.max(axis=1) - positive)
    assert 0 <= low * nt_xent[index] - margin + 1e-6
    assert low * nt_xent[index] - margin <= low * math.log(num_rows - 1) + 1e-6
  assert errors_total > 0  # Otherwise the factor 2 would be untested.

  rwl, _, _ = (np.asarray(v, np.float64) for v in STATISTICS(z1, z2, high))
  collapse = closed_forms.collapse_values(batch_size)["rwl"]
  for index in range(len(seeds)):
    z = np.concatenate([z1[index], z2[index]]).astype(np.float64)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    similarities = unit @ unit.T
    alignment = (np.sum(similarities[np.arange(num_rows), spectral.positive_index(num_rows)])
                 - (np.sum(unit.sum(axis=0)**2) - num_rows) / (num_rows - 1))
    assert abs(high * (rwl[index] - collapse) + 2 * alignment / (num_rows - 1)) <= 1e-2 * (
        1 + abs(alignment))
    rwl_grad = np.asarray(RWL_GRAD(z1[index], z2[index], high))
    nt_xent_grad = np.asarray(NT_XENT_GRAD(z1[index], z2[index], high))
    assert np.linalg.norm(rwl_grad - 2 * num_rows / (num_rows - 1) * nt_xent_grad) <= (
        1e-2 * np.linalg.norm(rwl_grad))


def test_spectral_clustering_guarantee_and_normalised_cut():
  """T5 (R4, R5): with RWL < 1, L_rw has a real spectrum with exactly B eigenvalues in
  [0, sqrt(RWL)] and B in [2 - sqrt(RWL), 2]; Ncut <= sum(1 - p) <= min(sqrt(N RWL), N NTX)."""
  batch_size, temperature = 8, 0.1
  num_rows = 2 * batch_size
  z1, z2 = noisy_pairs(range(4), batch_size, 16, 0.05)
  rwl, nt_xent, _ = (np.asarray(v, np.float64) for v in STATISTICS(z1, z2, temperature))
  for index in range(len(z1)):
    assert rwl[index] < 1
    z = np.concatenate([z1[index], z2[index]])
    eigenvalues = np.linalg.eigvals(np.asarray(LAPLACIAN(jnp.asarray(z), temperature),
                                               np.float64))
    assert np.abs(eigenvalues.imag).max() <= 1e-5
    real = np.sort(eigenvalues.real)
    radius = math.sqrt(rwl[index])
    assert real[batch_size - 1] <= radius + 1e-5
    assert real[batch_size] >= 2 - radius - 1e-5
    assert spectral.band_counts(real, rwl[index], slack=1e-5) == (batch_size, batch_size)
    # The float64 theory module has the same spectrum (symmetric form) and the same RWL.
    np.testing.assert_allclose(spectral.laplacian_eigenvalues(z, temperature), real, atol=1e-5)
    summary = spectral.batch_spectrum(z, temperature)
    np.testing.assert_allclose([summary["rwl"], summary["nt_xent"]], [rwl[index], nt_xent[index]],
                               rtol=1e-4)
    assert summary["ncut"] <= summary["negative_mass"] + 1e-12
    assert summary["negative_mass"] <= min(math.sqrt(num_rows * rwl[index]),
                                           num_rows * nt_xent[index]) + 1e-5


def test_bottom_band_counts_instance_clusters():
  """The bottom band counts clusters: merging two instances (image 1 := image 0) leaves B - 1
  eigenvalues near 0, and RWL >= 1 there, outside R5's hypothesis (so R5 is not contradicted)."""
  batch_size, temperature = 8, 0.1
  z1, z2 = (v[0] for v in noisy_pairs([0], batch_size, 16, 0.05))
  separate = spectral.batch_spectrum(np.concatenate([z1, z2]), temperature)
  radius = math.sqrt(separate["rwl"])
  z1[1], z2[1] = z1[0], z2[0] + 0.01
  merged = spectral.batch_spectrum(np.concatenate([z1, z2]), temperature)
  assert separate["bottom_band"] == batch_size and merged["rwl"] >= 1
  assert np.count_nonzero(merged["eigenvalues"] <= radius) == batch_size - 1


def test_ncut_matches_the_shi_malik_definition():
  """ncut_instances = sum over the B parts of cut(part, rest) / vol(part), from explicit S."""
  batch_size, temperature = 5, 0.5
  z1, z2 = noisy_pairs([3], batch_size, 4, 0.7)
  z = np.concatenate([z1[0], z2[0]]).astype(np.float64)
  unit = z / np.linalg.norm(z, axis=1, keepdims=True)
  similarity = np.exp(unit @ unit.T / temperature)
  np.fill_diagonal(similarity, 0.0)
  expected = 0.0
  for i in range(batch_size):
    part = np.zeros(2 * batch_size, bool)
    part[[i, i + batch_size]] = True
    expected += similarity[part][:, ~part].sum() / similarity[part].sum()
  np.testing.assert_allclose(spectral.ncut_instances(z, temperature), expected, rtol=1e-12)
  # Stable where S itself would overflow float64 (1/tau = 2000).
  assert np.isfinite(spectral.ncut_instances(z, 5e-4))


def test_gradient_facts():
  """T6 (R10): z_i . dL/dz_i = 0 (scale invariance); exact zero gradients at collapse for RWL,
  NT-Xent and VICReg; Barlow Twins' column sums of dL/dz1 vanish (shift invariance)."""
  temperature = 0.4
  z1, z2 = (jnp.asarray(v[0]) for v in noisy_pairs([0], 8, 16, 0.5))
  for grad in (RWL_GRAD, NT_XENT_GRAD):
    gradient = np.asarray(grad(z1, z2, temperature))
    radial = np.abs(np.sum(np.asarray(z1) * gradient, axis=1))
    assert np.all(radial <= 1e-5 * np.abs(gradient).max() * np.linalg.norm(z1, axis=1))
    assert np.abs(gradient).max() > 1e-3  # Not trivially zero.
  ones = jnp.ones((8, 16))
  assert np.abs(np.asarray(RWL_GRAD(ones, ones, temperature))).max() <= 1e-7
  assert np.abs(np.asarray(NT_XENT_GRAD(ones, ones, temperature))).max() <= 1e-7
  assert np.abs(np.asarray(VICREG_GRAD(ones, ones))).max() <= 1e-7
  barlow_gradient = np.asarray(BARLOW_GRAD(z1, z2))
  assert np.abs(barlow_gradient.sum(axis=0)).max() <= 1e-6
  assert np.abs(barlow_gradient).max() > 1e-3


def test_graph_laplacian_identities():
  """T9 (I1, I2): VICReg's invariance = tr(Z^T (I - T) Z)/(B d); RWL = ||L_rw(S) - (I - T)||_F^2."""
  batch_size, dim, temperature = 8, 16, 0.4
  z1, z2 = (v[0] for v in noisy_pairs([1], batch_size, dim, 0.5))
  z = np.concatenate([z1, z2]).astype(np.float64)
  pair_laplacian = np.eye(2 * batch_size) - closed_forms.pair_graph(batch_size)
  np.testing.assert_array_equal(closed_forms.pair_graph(batch_size), losses.pair_target(batch_size))
  invariance = float(VICREG_TERMS(jnp.asarray(z1), jnp.asarray(z2))["invariance"])
  np.testing.assert_allclose(invariance, np.trace(z.T @ pair_laplacian @ z) / (batch_size * dim),
                             rtol=1e-6)
  laplacian = np.asarray(LAPLACIAN(jnp.asarray(z, jnp.float32), temperature), np.float64)
  rwl, _, _ = STATISTICS(z1[None], z2[None], temperature)
  np.testing.assert_allclose(float(rwl[0]), np.sum(np.square(laplacian - pair_laplacian)),
                             rtol=1e-6)
  np.testing.assert_allclose(float(rwl[0]), spectral.rwl_value(z, temperature), rtol=1e-5)
