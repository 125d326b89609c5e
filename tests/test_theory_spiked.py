"""Ji et al.'s mechanism in rwl_jax.theory.spiked (docs/theory.md section 6; tests T10, T11).

Everything but T11 is float64 NumPy: exact identities use 1e-12, the subspace statements the
margins stated at each assert (sin Theta lies in [0, sqrt(r)]).
"""

import itertools
import math

import numpy as np
import pytest

from rwl_jax import losses
from rwl_jax.theory import spiked


def test_complementary_masks_delete_the_diagonal_exactly():
  """E_A[(A x)((I - A) x)^T] = p(1-p) Delta(x x^T) and E_A[(A x)(A x)^T] = p^2 x x^T +
  p(1-p) diag(x x^T), by exact enumeration of all 2^d masks (p = 1/2: equal weights)."""
  dim, keep = 6, 0.5
  x = np.random.default_rng(0).normal(size=dim)
  masks = np.array(list(itertools.product([0.0, 1.0], repeat=dim)))
  cross = np.mean([np.outer(a * x, (1 - a) * x) for a in masks], axis=0)
  same = np.mean([np.outer(a * x, a * x) for a in masks], axis=0)
  outer = np.outer(x, x)
  np.testing.assert_allclose(cross, keep * (1 - keep) * spiked.delete_diagonal(outer), atol=1e-12)
  np.testing.assert_allclose(same, keep**2 * outer + keep * (1 - keep) * np.diag(np.diag(outer)),
                             atol=1e-12)
  # The sampled estimator is that expectation divided by p(1 - p), symmetrised.
  rng = np.random.default_rng(1)
  views = spiked.complementary_mask_views(np.tile(x, (4, 1)), rng)
  assert np.all(views[0] * views[1] == 0) and np.allclose(views[0] + views[1], x)


def test_sin_theta_properties():
  rng = np.random.default_rng(0)
  basis = spiked.random_orthonormal(10, 3, rng)
  np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-12)
  assert spiked.sin_theta(basis, basis @ rng.normal(size=(3, 3))) <= 1e-12
  orthogonal = spiked.random_orthonormal(10, 3, rng)
  orthogonal -= basis @ (basis.T @ orthogonal)
  np.testing.assert_allclose(spiked.sin_theta(basis, orthogonal), math.sqrt(3), rtol=1e-12)
  # One shared direction out of three: sqrt(2).
  mixed = np.concatenate([basis[:, :1], orthogonal[:, :2]], axis=1)
  np.testing.assert_allclose(spiked.sin_theta(basis, mixed), math.sqrt(2), rtol=1e-10)
  # A collapsed (rank-one) representation counts as its span.
  np.testing.assert_allclose(spiked.sin_theta(basis, basis[:, [0, 0, 0]]), 1.0, rtol=1e-10)


def test_hadamard_and_corr_pca():
  matrix = spiked.hadamard(16)
  np.testing.assert_array_equal(matrix @ matrix.T, 16 * np.eye(16))
  with pytest.raises(ValueError):
    spiked.hadamard(12)
  # corr_pca = D^-1/2 (top eigenvectors of the correlation matrix D^-1/2 Sigma D^-1/2).
  x = np.random.default_rng(0).normal(size=(500, 8)) * np.linspace(0.5, 3, 8)
  x[:, 1] += x[:, 0]
  covariance = spiked.sample_covariance(x)
  scale = 1 / np.sqrt(np.diag(covariance))
  expected = scale[:, None] * spiked.top_eigenspace(scale[:, None] * covariance * scale, 2)
  assert spiked.sin_theta(spiked.corr_pca(x, 2), expected) <= 1e-10


def test_population_diag_deletion_is_exact_for_flat_rows_and_pca_fails():
  """T10(a), J1, J2: U* = three Hadamard columns (all rows of norm sqrt(3/64)) and any diagonal
  noise: the top-3 eigenspace of Sigma - diag(Sigma) is U* (<= 1e-10); PCA's is >= 1.5 away."""
  basis = spiked.hadamard(64)[:, 1:4] / 8
  noise_variance = np.random.default_rng(0).uniform(0.1, 9, 64)
  covariance = basis @ basis.T + np.diag(noise_variance)
  diag_deleted = spiked.top_eigenspace(spiked.delete_diagonal(covariance), 3)
  assert spiked.sin_theta(diag_deleted, basis) <= 1e-10
  assert spiked.sin_theta(spiked.top_eigenspace(covariance, 3), basis) >= 1.5
  assert spiked.population_bias(basis) <= 1e-10


def test_population_bias_obeys_the_davis_kahan_bound():
  """J1: bias <= 2 sqrt(r) max_i ||e_i^T U*||^2, and the bound is not vacuous (< sqrt(r))."""
  for seed, dim in [(0, 50), (1, 100), (2, 200)]:
    basis = spiked.random_orthonormal(dim, 3, np.random.default_rng(seed))
    bound = 2 * math.sqrt(3) * np.max(np.sum(basis**2, axis=1))
    assert 0 < spiked.population_bias(basis) <= bound < math.sqrt(3)


def heteroskedastic_model(seed, dim=50, rank=3, largest_sd=3.0, ratio=30.0):
  rng = np.random.default_rng(seed)
  model = spiked.SpikedCovariance(spiked.random_orthonormal(dim, rank, rng),
                                  spiked.linear_noise_sd(dim, largest_sd, ratio))
  return model, rng


def test_gradient_descent_on_the_standin_loss_reaches_the_diag_deleted_subspace():
  """T10(b): GD (lr 0.05, 20000 steps, W0 = 0.01 N(0, 1)) on L_Ji with one complementary mask per
  sample converges to W W^T = [M_hat]_{3,+} (<= 1e-8), whose subspace is < 0.5 from U* while
  PCA's is > 1.5 (d = 50, r = 3, n = 20000, noise sd 3 -> 0.1)."""
  model, rng = heteroskedastic_model(0)
  x, _ = model.sample(20000, rng)
  cross_moment = spiked.masked_cross_moment(*spiked.complementary_mask_views(x, rng))
  w = 0.01 * rng.normal(size=(50, 3))
  start = spiked.ji_standin_loss(w, cross_moment)
  for _ in range(20000):
    w -= 0.05 * spiked.ji_standin_gradient(w, cross_moment)
  target = spiked.rank_r_positive_part(cross_moment, 3)
  assert np.linalg.norm(w @ w.T - target) <= 1e-8
  # The minimum value is -||[M]_{3,+}||_F^2 / 2 (Eckart-Young), well below the start.
  np.testing.assert_allclose(spiked.ji_standin_loss(w, cross_moment),
                             -0.5 * np.sum(np.square(target)), rtol=1e-10)
  assert start > spiked.ji_standin_loss(w, cross_moment) + 1
  assert spiked.sin_theta(w, model.basis) < 0.5 < 1.5 < spiked.sin_theta(spiked.pca(x, 3),
                                                                         model.basis)


def test_finite_sample_estimators_order():
  """J4 at one size: diag-deleted PCA beats PCA by far under heteroskedastic noise, and both are
  close (< 0.3) under homoskedastic noise, where PCA is at least as good up to 0.05."""
  model, rng = heteroskedastic_model(1)
  x, _ = model.sample(20000, rng)
  assert spiked.sin_theta(spiked.diag_deleted_pca(x, 3), model.basis) < 0.6
  assert spiked.sin_theta(spiked.pca(x, 3), model.basis) > 1.5
  flat = spiked.SpikedCovariance(model.basis, np.ones(50))
  x, _ = flat.sample(20000, rng)
  pca_error = spiked.sin_theta(spiked.pca(x, 3), model.basis)
  diag_deleted_error = spiked.sin_theta(spiked.diag_deleted_pca(x, 3), model.basis)
  assert pca_error < 0.3 and diag_deleted_error < 0.3
  assert pca_error <= diag_deleted_error + 0.05


@pytest.mark.slow
def test_trained_project_losses_learn_correlation_pca_and_beat_pca_downstream():
  """T11 (J3): linear encoders trained with the project losses under masking: VICReg lands within
  sin Theta 0.2 of correlation PCA; NT-Xent, RWL and VICReg reach downstream R^2 >= 0.80 while
  PCA stays <= 0.70 (d = 50, r = 3, n = 10000, noise sd 1 -> 0.1)."""
  model, rng = heteroskedastic_model(0, largest_sd=1.0, ratio=10.0)
  x, _ = model.sample(10000, rng)
  labelled, latent = model.sample(10000, rng)
  target = latent @ rng.normal(size=3) + 0.1 * rng.normal(size=len(latent))

  def r2(basis):
    features = labelled @ basis
    return spiked.downstream_r2(features[:5000], target[:5000], features[5000:], target[5000:])

  assert r2(spiked.pca(x, 3)) <= 0.70
  trained = {
      "nt_xent": lambda z1, z2: losses.nt_xent_loss(z1, z2, 0.4),
      "rwl": lambda z1, z2: losses.rwl_loss(z1, z2, 0.4),
      "vicreg": losses.vicreg_loss,
  }
  for name, loss in trained.items():
    w = spiked.train_masked_linear_encoder(loss, x, np.random.default_rng(1), steps=3000, rank=3)
    assert r2(w) >= 0.80, name
    if name == "vicreg":
      assert spiked.sin_theta(w, spiked.corr_pca(x, 3)) <= 0.2
