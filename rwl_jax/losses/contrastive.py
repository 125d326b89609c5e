"""Random-walk Laplacian (RWL) and NT-Xent losses: one masked-softmax kernel, two losses.

Notation. Two views of B images give z = concat(z1, z2) with N = 2B rows, each L2-normalised.
Row i's other view is pos(i) = (i + B) mod N. With S_ij = exp(z_i . z_j / tau) for i != j and
S_ii = 0, the random-walk transition matrix is

    P = D^-1 S,   D = diag(sum_j S_ij),   i.e.   P_ij = softmax_{j != i}(z_i . z_j / tau),

and the random-walk Laplacian is L_rw = I - P. P is computed as a row softmax of z z^T / tau
with the diagonal masked (log-sum-exp stable), never as an explicit D^-1 product: in float32 the
explicit form overflows once 1/tau exceeds ~88, while the softmax is exact for any tau > 0.
Inputs of any float dtype (bf16 included) are cast to float32 before the similarity.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

_EPS = 1e-12  # Guards the norm of an all-zero embedding; invisible for any real embedding.


def _check_temperature(temperature: float) -> None:
  # Temperatures are config constants, so this check runs at trace time, not per step.
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")


def l2_normalize(z: chex.Array) -> chex.Array:
  """z / ||z|| per row, in float32."""
  z = z.astype(jnp.float32)
  return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), _EPS))


def log_transition_rows(z_rows: chex.Array, row_index: chex.Array, z_all: chex.Array,
                        temperature: float) -> chex.Array:
  """Rows `row_index` of log P: [R, N] from L2-normalised z_rows [R, d] and z_all [N, d].

  log P_ij = z_i.z_j/tau - logsumexp_{k != i} z_i.z_k/tau, with z_rows[r] = z_all[row_index[r]];
  column row_index[r] of row r is -inf (P_ii = 0). A block of rows is all a device needs for
  its share of the loss (losses.sharded).
  """
  chex.assert_rank([z_rows, row_index, z_all], [2, 1, 2])
  _check_temperature(temperature)
  logits = (z_rows @ z_all.T) / temperature
  self_mask = row_index[:, None] == jnp.arange(z_all.shape[0])[None, :]
  # -inf, not a large negative number: softmax then gives exactly 0 and a zero gradient there.
  logits = jnp.where(self_mask, -jnp.inf, logits)
  return jax.nn.log_softmax(logits, axis=-1)


def log_transition_matrix(z: chex.Array, temperature: float) -> chex.Array:
  """log P for embeddings z of shape [N, d]: log P_ij = z_i.z_j/tau - logsumexp_{k != i} z_i.z_k/tau.

  The diagonal is -inf (P_ii = 0). Rows are normalised here, so z need not be.
  """
  chex.assert_rank(z, 2)
  z = l2_normalize(z)
  return log_transition_rows(z, jnp.arange(z.shape[0]), z, temperature)


def transition_matrix(z: chex.Array, temperature: float) -> chex.Array:
  """P = D^-1 S, the [N, N] random-walk transition matrix: rows sum to 1, zero diagonal."""
  return jnp.exp(log_transition_matrix(z, temperature))


def random_walk_laplacian(z: chex.Array, temperature: float) -> chex.Array:
  """L_rw = I - P for embeddings z of shape [N, d]."""
  return jnp.eye(z.shape[0], dtype=jnp.float32) - transition_matrix(z, temperature)


def pair_target(num_pairs: int) -> chex.Array:
  """T of shape [2B, 2B]: T_ij = 1 exactly when j is i's other view (i <-> i + B)."""
  eye = jnp.eye(num_pairs, dtype=jnp.float32)
  zeros = jnp.zeros_like(eye)
  return jnp.block([[zeros, eye], [eye, zeros]])


def _concat_views(z1: chex.Array, z2: chex.Array) -> chex.Array:
  chex.assert_rank([z1, z2], 2)
  chex.assert_equal_shape([z1, z2])
  return jnp.concatenate([z1, z2], axis=0)


def _positives(row_index: chex.Array, num_rows: int) -> chex.Array:
  return (row_index + num_rows // 2) % num_rows


def rwl_row_terms(z_rows: chex.Array, row_index: chex.Array, z_all: chex.Array,
                  temperature: float) -> chex.Array:
  """sum over the rows i in row_index of sum_{j != i} (P_ij - T_ij)^2 (normalised inputs)."""
  log_p = log_transition_rows(z_rows, row_index, z_all, temperature)
  columns = jnp.arange(z_all.shape[0])[None, :]
  target = (columns == _positives(row_index, z_all.shape[0])[:, None]).astype(jnp.float32)
  squared_error = jnp.square(jnp.exp(log_p) - target)
  return jnp.sum(jnp.where(columns == row_index[:, None], 0.0, squared_error))


def nt_xent_row_terms(z_rows: chex.Array, row_index: chex.Array, z_all: chex.Array,
                      temperature: float) -> chex.Array:
  """sum over the rows i in row_index of -log P_{i, pos(i)} (normalised inputs)."""
  log_p = log_transition_rows(z_rows, row_index, z_all, temperature)
  positive = _positives(row_index, z_all.shape[0])[:, None]
  return -jnp.sum(jnp.take_along_axis(log_p, positive, axis=1))


def rwl_loss(z1: chex.Array, z2: chex.Array, temperature: float) -> chex.Array:
  """Random-walk Laplacian loss: sum_{i != j} (P_ij - T_ij)^2 on z = concat(z1, z2).

  Equivalently ||L_rw - (I - T)||_F^2, since the diagonals of P and T are both zero. Summed over
  all 2B x 2B entries as in the reference code (not averaged), so its scale grows with B.

  Args:
    z1: [B, d] embeddings of the first views.
    z2: [B, d] embeddings of the second views (row i is the same image as z1's row i).
    temperature: tau > 0.

  Returns:
    A float32 scalar.
  """
  z = l2_normalize(_concat_views(z1, z2))
  return rwl_row_terms(z, jnp.arange(z.shape[0]), z, temperature)


def nt_xent_loss(z1: chex.Array, z2: chex.Array, temperature: float) -> chex.Array:
  """SimCLR's NT-Xent: mean over the 2B rows of -log P_{i, pos(i)}.

  -log P_{i,pos(i)} = -z_i.z_pos(i)/tau + log sum_{k != i} exp(z_i.z_k/tau), the same P as RWL.

  Args:
    z1: [B, d] embeddings of the first views.
    z2: [B, d] embeddings of the second views.
    temperature: tau > 0.

  Returns:
    A float32 scalar.
  """
  z = l2_normalize(_concat_views(z1, z2))
  return nt_xent_row_terms(z, jnp.arange(z.shape[0]), z, temperature) / z.shape[0]
