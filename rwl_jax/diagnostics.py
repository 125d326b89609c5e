"""Training diagnostics the theory says a run should watch: pure, jittable float32 functions.

Notation as in losses.contrastive (docs/theory.md holds the statements S2, R4-R6 cited below):
two views of B images give z = concat(z1, z2) with N = 2B rows, z_hat_i = z_i / ||z_i||,
pos(i) = (i + B) mod N, and P = D^-1 S is the row softmax of z_hat z_hat^T / tau with a zero
diagonal. P always comes from losses.log_transition_rows / log_transition_matrix (a masked
log-softmax), never from an explicit D^-1 S product, so every quantity here is exact for any
tau > 0.

What each diagnostic tells a run:

* p_i = P_{i,pos(i)} and its mean p_pos: how much of each row's random walk lands on its other view.
  Its best possible value for (B, tau) is the closed-form p* of the simplex optimum (theory.md S2),
  so p_pos / p_pos_ceiling is "how solved" the batch is, whatever the temperature.
* ncut_bound = sum_i (1 - p_i): an upper bound on the normalised cut of the partition of the batch
  into its B instances (theory.md R4).
* effective_rank: RankMe (Garrido et al. 2023), the dimensional-collapse detector.
* alignment / uniformity: Wang & Isola 2020, on L2-normalised rows.
* laplacian_band_counts: when rwl < 1, exactly B eigenvalues of L_rw = I - P lie in
  [0, sqrt(rwl)] and exactly B in [2 - sqrt(rwl), 2] (theory.md R5, Bauer-Fike): the embedding graph
  then has the spectral-clustering structure of the augmentation graph.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from rwl_jax import losses
from rwl_jax.theory import closed_forms

# RankMe's epsilon (Garrido et al. 2023): keeps p_k log p_k finite for zero singular values.
_RANK_EPS = 1e-7
# Guards divisions by a sum of singular values that is 0 only for an all-zero matrix.
_TINY = 1e-30
# The floor losses.l2_normalize puts under a squared norm (an all-zero row), so both agree.
_SQUARED_NORM_FLOOR = 1e-12


def _concat_views(z1: chex.Array, z2: chex.Array) -> chex.Array:
  chex.assert_rank([z1, z2], 2)
  chex.assert_equal_shape([z1, z2])
  return jnp.concatenate([z1, z2], axis=0)


def _inverse_norm(z: chex.Array) -> chex.Array:
  """1/||z_i|| per row, [n, 1]: the factor losses.l2_normalize applies."""
  return jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), _SQUARED_NORM_FLOOR))


def _other_view(row_index: chex.Array, num_rows: int) -> chex.Array:
  """pos(i) = (i + B) mod N, N = num_rows = 2B."""
  return (row_index + num_rows // 2) % num_rows


def positive_probability_row_terms(z_rows: chex.Array, row_index: chex.Array, z_all: chex.Array,
                                   temperature: float) -> chex.Array:
  """sum over the rows i in row_index of p_i = P_{i,pos(i)} (L2-normalised inputs).

  The signature of losses.rwl_row_terms, so that on a batch split over a mesh axis

      losses.row_sharded_sum(positive_probability_row_terms, mesh, axis)(z1, z2, tau) / (2 B)

  is p_pos computed row-sharded: each device forms only its [2b, 2B] block of log P.

  Args:
    z_rows: [R, d] normalised embeddings of the rows, z_rows[r] = z_all[row_index[r]].
    row_index: [R] integer indices of those rows in z_all.
    z_all: [N, d] normalised embeddings of the whole batch, N = 2B.
    temperature: tau > 0.

  Returns:
    A float32 scalar.
  """
  log_p = losses.log_transition_rows(z_rows, row_index, z_all, temperature)
  positive = _other_view(row_index, z_all.shape[0])[:, None]
  return jnp.sum(jnp.exp(jnp.take_along_axis(log_p, positive, axis=1)))


def positive_probabilities(z1: chex.Array, z2: chex.Array, temperature: float) -> chex.Array:
  """p_i = P_{i,pos(i)} for the N = 2B rows of z = concat(z1, z2).

  p_i = exp(z_hat_i.z_hat_pos(i)/tau) / sum_{k != i} exp(z_hat_i.z_hat_k/tau), the one-step
  probability that the embedding random walk goes from a view to the other view of its image.

  Args:
    z1: [B, d] embeddings of the first views.
    z2: [B, d] embeddings of the second views.
    temperature: tau > 0.

  Returns:
    [N] float32, in (0, 1).
  """
  z = losses.l2_normalize(_concat_views(z1, z2))
  rows = jnp.arange(z.shape[0])
  log_p = losses.log_transition_rows(z, rows, z, temperature)
  return jnp.exp(log_p[rows, _other_view(rows, z.shape[0])])


def contrastive_statistics(z1: chex.Array, z2: chex.Array,
                           temperature: float) -> dict[str, chex.Array]:
  """p_pos, its closed-form ceiling, and the normalised-cut bound of the instance partition.

  * p_pos = (1/N) sum_i p_i.
  * p_pos_ceiling = p* = 1 / (1 + eps),  eps = 2 (B - 1) exp(-B / ((B - 1) tau)): the p_i of the
    global optimum (regular simplex of the B images, theory.md S2/R6), the largest p_pos any
    embedding reaches at this (B, tau) once d >= B - 1. A Python constant of the static B and tau,
    from theory.closed_forms.contrastive_optimum.
  * ncut_bound = sum_i (1 - p_i) >= Ncut of the partition of the batch into its B instances in
    the embedding graph S (theory.md R4); also <= min(sqrt(N rwl), N nt_xent).

  Args:
    z1: [B, d] embeddings of the first views.
    z2: [B, d] embeddings of the second views.
    temperature: tau > 0, static under jit.

  Returns:
    {"p_pos", "p_pos_ceiling", "ncut_bound"}: float32 scalars.
  """
  p = positive_probabilities(z1, z2, temperature)
  ceiling = closed_forms.contrastive_optimum(z1.shape[0], temperature)["p"]
  return {
      "p_pos": jnp.mean(p),
      "p_pos_ceiling": jnp.asarray(ceiling, jnp.float32),
      "ncut_bound": jnp.sum(1.0 - p),
  }


def effective_rank(x: chex.Array) -> chex.Array:
  """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values.

  With s the singular values of x [n, d] (x neither centred nor normalised, as in the paper),

      p_k = s_k / sum_j s_j + eps,   rank = exp(-sum_k p_k log p_k),   eps = 1e-7.

  Between ~1 (collapsed: one direction, or an all-zero x) and min(n, d) (equal singular values);
  a matrix of rank r with equal singular values gives r.

  Args:
    x: [n, d] representations (any float dtype; computed in float32).

  Returns:
    A float32 scalar.
  """
  chex.assert_rank(x, 2)
  singular_values = jnp.linalg.svd(x.astype(jnp.float32), compute_uv=False)
  p = singular_values / jnp.maximum(jnp.sum(singular_values), _TINY) + _RANK_EPS
  return jnp.exp(-jnp.sum(p * jnp.log(p)))


def alignment(z1: chex.Array, z2: chex.Array, alpha: float = 2.0) -> chex.Array:
  """Wang & Isola's alignment: (1/B) sum_i ||z1_hat_i - z2_hat_i||^alpha (lower is better).

  Args:
    z1: [B, d] embeddings of the first views (normalised here).
    z2: [B, d] embeddings of the second views, row i the same image as z1's row i.
    alpha: the exponent, > 0 (2 in the paper).

  Returns:
    A float32 scalar in [0, 2^alpha].
  """
  chex.assert_rank([z1, z2], 2)
  chex.assert_equal_shape([z1, z2])
  z1, z2 = z1.astype(jnp.float32), z2.astype(jnp.float32)
  inverse_norm1, inverse_norm2 = _inverse_norm(z1), _inverse_norm(z2)
  # z1_hat - z2_hat written as (z1 - z2)/|z1| + z2 (1/|z1| - 1/|z2|), equally accurate: the plain
  # z1/|z1| - z2/|z2| leaves ~1e-8 where z1 == z2 once XLA fuses it into a multiply-add, while
  # here equal rows give exactly 0 (both factors vanish).
  difference = (z1 - z2) * inverse_norm1 + z2 * (inverse_norm1 - inverse_norm2)
  squared_distance = jnp.sum(jnp.square(difference), axis=1)
  # A power of the squared distance, not of its sqrt: exact for alpha = 2 (no sqrt round trip).
  return jnp.mean(squared_distance ** (alpha / 2))


def uniformity(z: chex.Array, t: float = 2.0) -> chex.Array:
  """Wang & Isola's uniformity of ONE set of n rows (lower is more uniform):

      log (1 / (n (n - 1))) sum_{i != j} exp(-t ||z_hat_i - z_hat_j||^2).

  Takes a single view, as in the paper, which applies it to each view and averages
  ((uniformity(z1) + uniformity(z2)) / 2, what probe_diagnostics reports): pairs of views of the
  same image are excluded that way. 0 for a collapsed set (all rows equal); -4t, the lowest
  possible, for an antipodal pair (n = 2).

  ||z_hat_i - z_hat_j||^2 is formed as G_ii + G_jj - 2 G_ij from the Gram matrix G = z_hat z_hat^T
  (O(n^2) memory, not the O(n^2 d) of pairwise differences), clipped at 0. The diagonal comes from
  the same product as the off-diagonal, so identical rows give 0 (exactly, in practice: the three
  terms are the same dot product computed alike).

  Args:
    z: [n, d] embeddings, n >= 2 (normalised here).
    t: the kernel scale, > 0 (2 in the paper).

  Returns:
    A float32 scalar <= 0.
  """
  chex.assert_rank(z, 2)
  num_rows = z.shape[0]
  if num_rows < 2:
    raise ValueError(f"uniformity needs at least 2 rows, got {num_rows}")
  z = losses.l2_normalize(z)
  gram = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST)
  norms = jnp.diagonal(gram)
  squared_distance = jnp.maximum(norms[:, None] + norms[None, :] - 2.0 * gram, 0.0)
  off_diagonal = ~jnp.eye(num_rows, dtype=bool)
  # log-mean-exp over i != j: stable even when every pair is far apart and exp underflows.
  logits = jnp.where(off_diagonal, -t * squared_distance, -jnp.inf)
  return jax.nn.logsumexp(logits) - jnp.log(num_rows * (num_rows - 1.0))


def random_walk_laplacian_spectrum(z1: chex.Array, z2: chex.Array,
                                   temperature: float) -> chex.Array:
  """Eigenvalues of L_rw = I - P on z = concat(z1, z2), ascending, [N].

  P = D^-1 S is not symmetric but is similar to M = D^-1/2 S D^-1/2 (P = D^-1/2 M D^1/2), so
  eig(L_rw) = 1 - eigvalsh(M) is real, in [0, 2]. M is formed from log P, never from S or D
  (which overflow in float32 once 1/tau > ~88): since S is symmetric,

      P_ij P_ji = (S_ij / D_i)(S_ij / D_j) = M_ij^2,   so   M_ij = exp((log P_ij + log P_ji) / 2),

  with M_ii = exp(-inf) = 0. Float addition is commutative, so M is exactly symmetric.

  Args:
    z1: [B, d] embeddings of the first views.
    z2: [B, d] embeddings of the second views.
    temperature: tau > 0.

  Returns:
    [N] float32, ascending.
  """
  log_p = losses.log_transition_matrix(_concat_views(z1, z2), temperature)
  symmetric = jnp.exp(0.5 * (log_p + log_p.T))
  # eigvalsh is ascending in M, so 1 - eigvalsh is descending; flip to ascending.
  return jnp.flip(1.0 - jnp.linalg.eigvalsh(symmetric))


def laplacian_band_counts(z1: chex.Array, z2: chex.Array,
                          temperature: float) -> dict[str, chex.Array]:
  """rwl and the numbers of eigenvalues of L_rw in its two outer bands (theory.md R5).

      low_band  = #{lambda in eig(L_rw) : lambda <= sqrt(rwl)}        (the band [0, sqrt(rwl)]),
      high_band = #{lambda in eig(L_rw) : lambda >= 2 - sqrt(rwl)}    (the band [2 - sqrt(rwl), 2]),

  rwl = losses.rwl_loss(z1, z2, tau) = ||P - T||_F^2 >= ||P - T||_2^2. The spectrum lies in
  [0, 2] exactly, so the outer ends are not tested (float error can put the eigenvalue 0 at -1e-7).
  T has eigenvalues +-1, B each, so L_rw(T) = I - T has B zeros and B twos; if rwl < 1 the two
  Bauer-Fike discs of radius sqrt(rwl) are disjoint and both counts are exactly B: the embedding
  graph has B nearly disconnected pair components. For rwl >= 1 the counts carry no guarantee (the
  bands overlap, an eigenvalue can be in both).

  Args:
    z1: [B, d] embeddings of the first views.
    z2: [B, d] embeddings of the second views.
    temperature: tau > 0.

  Returns:
    {"rwl": float32 scalar, "low_band": int32 scalar, "high_band": int32 scalar}.
  """
  rwl = losses.rwl_loss(z1, z2, temperature)
  eigenvalues = random_walk_laplacian_spectrum(z1, z2, temperature)
  radius = jnp.sqrt(rwl)
  return {
      "rwl": rwl,
      "low_band": jnp.sum(eigenvalues <= radius, dtype=jnp.int32),
      "high_band": jnp.sum(eigenvalues >= 2.0 - radius, dtype=jnp.int32),
  }


def probe_diagnostics(features: chex.Array, z1: chex.Array, z2: chex.Array,
                      temperature: float) -> dict[str, chex.Array]:
  """Every diagnostic above on one probe batch, in one call (jit with static temperature).

  Args:
    features: [2B, F] encoder features of concat(view1, view2), in that order.
    z1: [B, d] projections of the first views.
    z2: [B, d] projections of the second views.
    temperature: tau > 0, static under jit.

  Returns:
    float32 scalars: p_pos, p_pos_ceiling, ncut_bound (contrastive_statistics); rank_projections
    (effective_rank of concat(z1, z2)); rank_features (effective_rank of features); alignment;
    uniformity ((uniformity(z1) + uniformity(z2)) / 2, per view as Wang & Isola); probe_rwl;
    lrw_low_band, lrw_high_band (laplacian_band_counts, as float32 so every value logs alike).
  """
  chex.assert_rank([features, z1, z2], 2)
  chex.assert_equal_shape([z1, z2])
  chex.assert_axis_dimension(features, 0, 2 * z1.shape[0])
  bands = laplacian_band_counts(z1, z2, temperature)
  out = dict(contrastive_statistics(z1, z2, temperature))
  out.update(
      rank_projections=effective_rank(_concat_views(z1, z2)),
      rank_features=effective_rank(features),
      alignment=alignment(z1, z2),
      uniformity=0.5 * (uniformity(z1) + uniformity(z2)),
      probe_rwl=bands["rwl"],
      lrw_low_band=bands["low_band"],
      lrw_high_band=bands["high_band"],
  )
  return {name: value.astype(jnp.float32) for name, value in out.items()}
