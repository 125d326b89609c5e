"""Ji et al.'s spiked covariance model, complementary masking, and the subspace estimators.

Model (docs/theory.md section 6): x = U* z + xi in R^d, U* in R^{d x r} orthonormal,
z ~ N(0, nu^2 I_r), xi ~ N(0, diag(sigma_1^2, ..., sigma_d^2)) with heteroskedastic noise, so
Sigma = E[x x^T] = nu^2 U* U*^T + diag(sigma^2). Augmentation: a_i ~ Bernoulli(p) iid, views A x and
(I - A) x. Because a_i (1 - a_i) = 0,

  E_A[(A x)((I - A) x)^T] = p (1 - p) Delta(x x^T),   Delta(M) = M - diag(M):

no coordinate's noise is in both views, so the cross-view moment is the covariance with its
diagonal deleted. Its top-r eigenspace is close to U* (bias <= 2 sqrt(r) max_i ||e_i^T U*||^2 by
Davis-Kahan), while PCA's top-r eigenspace of Sigma follows the noisiest coordinates.
Metric: ||sin Theta(U, V)||_F = ||P_U - P_V||_F / sqrt(2), in [0, sqrt(r)].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rwl_jax.theory.closed_forms import generalized_eigh


def hadamard(order: int) -> np.ndarray:
  """Sylvester's Hadamard matrix of a power-of-two order: +-1 entries, H H^T = order I."""
  if order < 1 or order & (order - 1):
    raise ValueError(f"order must be a power of two, got {order}")
  matrix = np.ones((1, 1))
  while len(matrix) < order:
    matrix = np.block([[matrix, matrix], [matrix, -matrix]])
  return matrix


def random_orthonormal(dim: int, rank: int, rng: np.random.Generator) -> np.ndarray:
  """A uniformly random d x r matrix with orthonormal columns (QR of a Gaussian matrix)."""
  q, r = np.linalg.qr(rng.normal(size=(dim, rank)))
  return q * np.sign(np.diagonal(r))


def linear_noise_sd(dim: int, largest: float, ratio: float) -> np.ndarray:
  """Noise standard deviations decreasing linearly from `largest` to `largest / ratio`."""
  return np.linspace(largest, largest / ratio, dim)


@dataclasses.dataclass(frozen=True)
class SpikedCovariance:
  """x = U* z + xi with z ~ N(0, signal_sd^2 I_r) and xi ~ N(0, diag(noise_sd^2)).

  Attributes:
    basis: U*, [d, r] with orthonormal columns.
    noise_sd: [d] per-coordinate noise standard deviations sigma_i.
    signal_sd: nu.
  """

  basis: np.ndarray
  noise_sd: np.ndarray
  signal_sd: float = 1.0

  def covariance(self) -> np.ndarray:
    """Sigma = nu^2 U* U*^T + diag(sigma^2)."""
    return self.signal_sd**2 * self.basis @ self.basis.T + np.diag(np.square(self.noise_sd))

  def sample(self, num_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(x [n, d], z [n, r]) drawn from the model."""
    latent = self.signal_sd * rng.normal(size=(num_samples, self.basis.shape[1]))
    noise = rng.normal(size=(num_samples, len(self.noise_sd))) * self.noise_sd
    return latent @ self.basis.T + noise, latent

  def bayes_basis(self) -> np.ndarray:
    """Sigma^-1 U*: E[z | x] = nu^2 U*^T Sigma^-1 x, so span(Sigma^-1 U*) is the best linear
    r-dimensional representation for predicting any linear function of z."""
    return np.linalg.solve(self.covariance(), self.basis)


def complementary_mask_views(x: np.ndarray, rng: np.random.Generator,
                             keep_probability: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """(A x, (I - A) x) with one mask a ~ Bernoulli(p)^d per row of x."""
  mask = rng.random(size=x.shape) < keep_probability
  return np.where(mask, x, 0.0), np.where(mask, 0.0, x)


def orthonormal_basis(w: np.ndarray, relative_tolerance: float = 1e-10) -> np.ndarray:
  """Orthonormal basis of the column span of w (left singular vectors above the tolerance)."""
  u, singular_values, _ = np.linalg.svd(np.asarray(w, dtype=np.float64), full_matrices=False)
  return u[:, singular_values > relative_tolerance * singular_values.max()]


def sin_theta(u: np.ndarray, v: np.ndarray) -> float:
  """||sin Theta(span u, span v)||_F = ||P_u - P_v||_F / sqrt(2) (columns need not be orthonormal).

  A rank-deficient u or v (a collapsed representation) counts as its actual span.
  """
  basis_u, basis_v = orthonormal_basis(u), orthonormal_basis(v)
  difference = basis_u @ basis_u.T - basis_v @ basis_v.T
  return float(np.linalg.norm(difference) / np.sqrt(2.0))


def top_eigenspace(matrix: np.ndarray, rank: int) -> np.ndarray:
  """Eigenvectors of the `rank` largest eigenvalues of a symmetric matrix, [d, rank]."""
  _, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
  return vectors[:, ::-1][:, :rank]


def sample_covariance(x: np.ndarray) -> np.ndarray:
  """(1/n) (x - mean)^T (x - mean)."""
  centred = x - x.mean(axis=0)
  return centred.T @ centred / len(x)


def delete_diagonal(matrix: np.ndarray) -> np.ndarray:
  """Delta(M) = M - diag(M)."""
  return matrix - np.diag(np.diagonal(matrix))


def pca(x: np.ndarray, rank: int) -> np.ndarray:
  """Top-r eigenspace of the sample covariance: the optimum of a linear autoencoder."""
  return top_eigenspace(sample_covariance(x), rank)


def diag_deleted_pca(x: np.ndarray, rank: int) -> np.ndarray:
  """Top-r eigenspace of Delta(Sigma_hat): the population limit of masked contrastive learning."""
  return top_eigenspace(delete_diagonal(sample_covariance(x)), rank)


def corr_pca(x: np.ndarray, rank: int) -> np.ndarray:
  """Top-r generalized eigenvectors of (Sigma_hat, diag Sigma_hat) ('correlation PCA').

  = D^-1/2 * top eigenvectors of the correlation matrix D^-1/2 Sigma D^-1/2. It is the population
  linear optimum of VICReg (V4), Barlow Twins (BT4) and the spectral-contrastive loss (S5) under
  complementary 50% masking, because each view's covariance is (Sigma + diag Sigma)/4 while the
  cross-view moment is Delta(Sigma)/4.
  """
  covariance = sample_covariance(x)
  _, vectors = generalized_eigh(covariance, np.diag(np.diagonal(covariance)))
  return vectors[:, ::-1][:, :rank]


def masked_cross_moment(x1: np.ndarray, x2: np.ndarray, keep_probability: float = 0.5,
                        ) -> np.ndarray:
  """M_hat = (1/n) sum_i sym(x_i^(1) x_i^(2)T) / (p (1 - p)): unbiased for Delta(Sigma)."""
  cross = x1.T @ x2 / len(x1)
  return 0.5 * (cross + cross.T) / (keep_probability * (1.0 - keep_probability))


def rank_r_positive_part(matrix: np.ndarray, rank: int) -> np.ndarray:
  """[M]_{r,+}: the best PSD rank-r approximation (top r eigenvalues clipped at 0)."""
  values, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
  values, vectors = values[::-1][:rank], vectors[:, ::-1][:, :rank]
  return (vectors * np.maximum(values, 0.0)) @ vectors.T


def ji_standin_loss(w: np.ndarray, cross_moment: np.ndarray) -> float:
  """L_Ji(W) = -tr(W^T M W) + (1/2) ||W^T W||_F^2 = (1/2) ||W W^T - M||_F^2 - (1/2) ||M||_F^2.

  A stand-in for Ji et al.'s linear contrastive loss with the same minimiser structure: the
  minimisers are W W^T = [M]_{r,+} (Eckart-Young), so with M = masked_cross_moment the learned
  subspace is the diag-deleted one. (Not verified to be verbatim the paper's loss.)
  """
  return float(-np.trace(w.T @ cross_moment @ w) + 0.5 * np.sum(np.square(w.T @ w)))


def ji_standin_gradient(w: np.ndarray, cross_moment: np.ndarray) -> np.ndarray:
  """dL_Ji/dW = -2 M W + 2 W (W^T W) (M symmetric)."""
  return -2.0 * cross_moment @ w + 2.0 * w @ (w.T @ w)


def population_bias(basis: np.ndarray) -> float:
  """sin Theta between U* and the top-r eigenspace of Delta(U* U*^T) (the noise-free, infinite-n
  diag-deleted estimator): <= 2 sqrt(r) max_i ||e_i^T U*||^2 (Davis-Kahan with gap nu^2), zero
  when all rows of U* have the same norm."""
  return sin_theta(top_eigenspace(delete_diagonal(basis @ basis.T), basis.shape[1]), basis)


def downstream_r2(train_features: np.ndarray, train_targets: np.ndarray,
                  test_features: np.ndarray, test_targets: np.ndarray) -> float:
  """Test R^2 of least-squares linear regression (with intercept) on the given features."""
  def design(features):
    return np.concatenate([features, np.ones((len(features), 1))], axis=1)

  coefficients, *_ = np.linalg.lstsq(design(train_features), train_targets, rcond=None)
  residual = test_targets - design(test_features) @ coefficients
  return float(1.0 - np.mean(np.square(residual)) / np.var(test_targets))


def train_masked_linear_encoder(loss, x: np.ndarray, rng: np.random.Generator, *, steps: int,
                                rank: int, batch_size: int = 256,
                                learning_rate: float = 3e-3) -> np.ndarray:
  """W [d, rank] trained by Adam on loss(A x W, (I - A) x W) over minibatches of x, with
  complementary 50 % masks A redrawn every step (float32 JAX; returned as float64).

  loss is one of the project's two-view losses, e.g. losses.rwl_loss with its temperature bound.
  Draws from rng in this order: batch indices, masks, the initial W ~ N(0, 1/d).
  """
  import jax  # pylint: disable=g-import-not-at-top  (the rest of this module is NumPy)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  samples, dim = x.shape
  optimizer = optax.adam(learning_rate)
  indices = jnp.asarray(rng.integers(0, samples, size=(steps, batch_size)))
  masks = jnp.asarray(rng.random(size=(steps, batch_size, dim)) < 0.5)
  data = jnp.asarray(x, jnp.float32)

  def step(carry, batch):
    w, state = carry
    index, mask = batch
    rows = data[index]
    gradient = jax.grad(lambda w: loss(jnp.where(mask, rows, 0) @ w,
                                       jnp.where(mask, 0, rows) @ w))(w)
    updates, state = optimizer.update(gradient, state)
    return (optax.apply_updates(w, updates), state), None

  w = jnp.asarray(rng.normal(size=(dim, rank)) / np.sqrt(dim), jnp.float32)
  (w, _), _ = jax.jit(lambda w: jax.lax.scan(step, (w, optimizer.init(w)), (indices, masks)))(w)
  return np.asarray(w, np.float64)
