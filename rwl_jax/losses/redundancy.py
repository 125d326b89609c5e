"""Redundancy-reduction losses, VICReg and Barlow Twins: statistics of each embedding dimension.

Both losses take the projections z1, z2 of two views of B images, shapes [n, d] with n = B rows,
and estimate per-dimension means, variances and (cross-)covariances over the rows. Every batch
statistic is over the whole batch the function is given: the train step calls these losses under
jit on the global batch sharded over devices, so XLA turns the reductions over rows into
cross-device ones and the statistics are global, as with the official codes' all-gather (VICReg's
FullGatherLayer) and SyncBatchNorm + all_reduce (Barlow Twins). Calling them on a per-device shard
instead (e.g. inside shard_map) would give per-device statistics, a different loss.

Inputs of any float dtype (bf16 included) are cast to float32 first, and the [d, d] products run
at HIGHEST precision (no bf16/TF32 passes on TPU/GPU): the diagonal of Barlow Twins' C is ~1 near
the optimum, where a 1e-3 product error would swamp (1 - C_ii)^2. Every loss is a float32 scalar.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def _check_views(z1: chex.Array, z2: chex.Array) -> None:
  chex.assert_rank([z1, z2], 2)
  chex.assert_equal_shape([z1, z2])
  # Shapes are static, so this runs at trace time. ddof=1 statistics need two rows.
  if z1.shape[0] < 2:
    raise ValueError(f"batch size must be >= 2 for batch statistics, got {z1.shape[0]}")


def _check_non_negative(**values: float) -> None:
  for name, value in values.items():
    if not value >= 0:
      raise ValueError(f"{name} must be >= 0, got {value}")


def _check_positive(**values: float) -> None:
  for name, value in values.items():
    if not value > 0:
      raise ValueError(f"{name} must be > 0, got {value}")


def _off_diagonal_square_sum(c: chex.Array) -> chex.Array:
  """sum_{i != j} c_ij^2 for a square c, masked (no sum(c^2) - sum(diag^2) cancellation)."""
  off_diagonal = ~jnp.eye(c.shape[0], dtype=bool)
  return jnp.sum(jnp.where(off_diagonal, jnp.square(c), 0.0))


def _centered_covariance(z: chex.Array) -> chex.Array:
  """C(z) = (z - mean)^T (z - mean) / (n - 1), the unbiased [d, d] covariance over the rows."""
  centered = z - jnp.mean(z, axis=0)
  return jnp.matmul(centered.T, centered, precision=jax.lax.Precision.HIGHEST) / (z.shape[0] - 1)


def vicreg_terms(z1: chex.Array, z2: chex.Array, *, gamma: float = 1.0,
                 epsilon: float = 1e-4) -> dict[str, chex.Array]:
  """The three unweighted VICReg terms (Bardes et al. 2022), following the official code.

  With n rows, d dims, Var_k the unbiased (ddof=1) variance of dim k over the rows, C(z) the
  unbiased covariance (z - mean)^T (z - mean) / (n - 1), and relu(x) = max(x, 0):

    invariance = 1/(n d) sum_{i,k} (z1_ik - z2_ik)^2                          (F.mse_loss)
    variance   = v(z1)/2 + v(z2)/2,  v(z) = 1/d sum_k relu(gamma - sqrt(Var_k(z) + epsilon))
    covariance = c(z1) + c(z2),      c(z) = 1/d sum_{k != l} C(z)_kl^2

  i.e. the variance term AVERAGES the two branches and the covariance term SUMS them, as in
  facebookresearch/vicreg main_vicreg.py (std_loss = mean(relu(1 - std_x)) / 2 + mean(relu(1 -
  std_y)) / 2; cov_loss = off_diagonal(cov_x).pow(2).sum() / d + the same for y), where gamma = 1.
  At collapse (all rows equal) they are 0, relu(gamma - sqrt(epsilon)) and 0.

  Args:
    z1: [n, d] projections of the first views.
    z2: [n, d] projections of the second views.
    gamma: target standard deviation per dimension, >= 0.
    epsilon: > 0 inside the sqrt; keeps the gradient finite at zero variance.

  Returns:
    {'invariance', 'variance', 'covariance'}: float32 scalars.
  """
  _check_views(z1, z2)
  _check_non_negative(gamma=gamma)
  _check_positive(epsilon=epsilon)
  z1 = z1.astype(jnp.float32)
  z2 = z2.astype(jnp.float32)
  num_dims = z1.shape[1]

  def variance(z):
    std = jnp.sqrt(jnp.var(z, axis=0, ddof=1) + epsilon)
    return jnp.mean(jax.nn.relu(gamma - std))

  def covariance(z):
    return _off_diagonal_square_sum(_centered_covariance(z)) / num_dims

  return {
      "invariance": jnp.mean(jnp.square(z1 - z2)),
      "variance": 0.5 * variance(z1) + 0.5 * variance(z2),
      "covariance": covariance(z1) + covariance(z2),
  }


def vicreg_loss(z1: chex.Array, z2: chex.Array, *, sim_coeff: float = 25.0,
                std_coeff: float = 25.0, cov_coeff: float = 1.0, gamma: float = 1.0,
                epsilon: float = 1e-4) -> chex.Array:
  """VICReg: sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance.

  The terms are those of vicreg_terms (see there for the exact formula and conventions); the
  default coefficients 25 / 25 / 1 are the paper's (lambda, mu, nu).

  Args:
    z1: [n, d] projections of the first views.
    z2: [n, d] projections of the second views.
    sim_coeff: weight of the invariance term, >= 0.
    std_coeff: weight of the variance term, >= 0.
    cov_coeff: weight of the covariance term, >= 0.
    gamma: target standard deviation per dimension, >= 0.
    epsilon: > 0 inside the sqrt of the variance term.

  Returns:
    A float32 scalar.
  """
  _check_non_negative(sim_coeff=sim_coeff, std_coeff=std_coeff, cov_coeff=cov_coeff)
  terms = vicreg_terms(z1, z2, gamma=gamma, epsilon=epsilon)
  return (sim_coeff * terms["invariance"] + std_coeff * terms["variance"]
          + cov_coeff * terms["covariance"])


def barlow_twins_terms(z1: chex.Array, z2: chex.Array, *,
                       epsilon: float = 1e-5) -> dict[str, chex.Array]:
  """Barlow Twins' two parts: on_diagonal = sum_k (1 - C_kk)^2, off_diagonal = sum_{k != l} C_kl^2.

  C is the cross-correlation of barlow_twins_loss (see there); the loss is
  on_diagonal + lambd * off_diagonal.
  """
  _check_views(z1, z2)
  _check_positive(epsilon=epsilon)

  def standardise(z):
    z = z.astype(jnp.float32)
    centered = z - jnp.mean(z, axis=0)
    return centered * jax.lax.rsqrt(jnp.mean(jnp.square(centered), axis=0) + epsilon)

  c = jnp.matmul(standardise(z1).T, standardise(z2),
                 precision=jax.lax.Precision.HIGHEST) / z1.shape[0]
  return {"on_diagonal": jnp.sum(jnp.square(1.0 - jnp.diagonal(c))),
          "off_diagonal": _off_diagonal_square_sum(c)}


def barlow_twins_loss(z1: chex.Array, z2: chex.Array, *, lambd: float = 0.0051,
                      epsilon: float = 1e-5) -> chex.Array:
  """Barlow Twins (Zbontar et al. 2021): sum_k (1 - C_kk)^2 + lambd * sum_{k != l} C_kl^2.

  C = z1n^T z2n / n is the [d, d] cross-correlation over the n rows, where each dimension is
  standardised over the batch as BatchNorm1d(affine=False) does in training mode:

    zn_ik = (z_ik - mean_k) / sqrt(Var_k + epsilon),   Var_k = 1/n sum_i (z_ik - mean_k)^2

  (BIASED variance, epsilon inside the sqrt, PyTorch's default eps = 1e-5), as in
  facebookresearch/barlowtwins main.py (c = bn(z1).T @ bn(z2) / batch_size; no loss scaling). A
  constant dimension standardises to 0, so at collapse C = 0 and the loss is d.

  Args:
    z1: [n, d] projections of the first views.
    z2: [n, d] projections of the second views.
    lambd: weight of the off-diagonal (redundancy) term, >= 0; 0.0051 as in the official code.
    epsilon: > 0 inside the sqrt of the standardisation.

  Returns:
    A float32 scalar.
  """
  _check_non_negative(lambd=lambd)
  terms = barlow_twins_terms(z1, z2, epsilon=epsilon)
  return terms["on_diagonal"] + lambd * terms["off_diagonal"]
