"""Losses of the predictor methods, BYOL and SimSiam: a prediction p regresses a target z.

Notation. Two views of B images pass through an online branch (encoder, projector, predictor)
giving predictions p1, p2, and through a target branch giving projections z1, z2, all [B, d]. The
target branch is an EMA copy of the online encoder in BYOL (Grill et al. 2020) and the online
encoder itself in SimSiam (Chen & He 2021); either way z is a regression target and gets no
gradient. With n(x) = x / ||x|| per row and cos(p, z) = n(p) . n(z):

    ||n(p) - n(z)||^2 = 2 - 2 cos(p, z)     (BYOL),        D(p, z) = -cos(p, z)     (SimSiam).

The symmetric losses apply stop_gradient to z inside, so a train step cannot forget it. Inputs of
any float dtype (bf16 included) are cast to float32 before the reductions; every loss is a float32
scalar averaged over the B rows.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from rwl_jax.losses.contrastive import l2_normalize


def normalized_std(z: chex.Array) -> chex.Array:
  """sqrt(d) * mean_k std_i n(z)_ik, the collapse monitor of the SimSiam paper (Sec. 4.1).

  For [B, d] projections spread like random directions each coordinate of n(z) has std about
  1/sqrt(d), so this is about 1; if every row collapses to one direction it is 0.
  """
  chex.assert_rank(z, 2)
  return jnp.sqrt(float(z.shape[1])) * jnp.mean(jnp.std(l2_normalize(z), axis=0))


def _check_pairs(*arrays: chex.Array) -> None:
  chex.assert_rank(list(arrays), 2)
  chex.assert_equal_shape(list(arrays))


def normalized_mse(p: chex.Array, z: chex.Array) -> chex.Array:
  """BYOL's one-direction loss: mean_i ||n(p_i) - n(z_i)||^2 = mean_i (2 - 2 cos(p_i, z_i)).

  n(x) = x / ||x|| per row. Computed as the squared difference, so it is >= 0 and exactly 0 when
  p == z. No stop_gradient here: the caller stops gradients on z (byol_loss does).

  Args:
    p: [B, d] predictions.
    z: [B, d] targets.

  Returns:
    A float32 scalar in [0, 4].
  """
  _check_pairs(p, z)
  return jnp.mean(jnp.sum(jnp.square(l2_normalize(p) - l2_normalize(z)), axis=-1))


def byol_loss(p1: chex.Array, p2: chex.Array, z1: chex.Array, z2: chex.Array) -> chex.Array:
  """Symmetric BYOL: normalized_mse(p1, sg(z2)) + normalized_mse(p2, sg(z1)).

  The SUM of the two directions, as in the BYOL paper (L + L~, Grill et al. 2020, Sec. 3.1), so it
  lies in [0, 8]; sg = stop_gradient is applied here, so z1 and z2 never receive gradients.

  Args:
    p1: [B, d] online predictions of the first views.
    p2: [B, d] online predictions of the second views.
    z1: [B, d] target projections of the first views.
    z2: [B, d] target projections of the second views.

  Returns:
    A float32 scalar.
  """
  _check_pairs(p1, p2, z1, z2)
  return (normalized_mse(p1, jax.lax.stop_gradient(z2))
          + normalized_mse(p2, jax.lax.stop_gradient(z1)))


def negative_cosine(p: chex.Array, z: chex.Array) -> chex.Array:
  """SimSiam's D(p, z) = -mean_i cos(p_i, sg(z_i)), with sg = stop_gradient applied here.

  Args:
    p: [B, d] predictions.
    z: [B, d] targets (receive no gradient).

  Returns:
    A float32 scalar in [-1, 1].
  """
  _check_pairs(p, z)
  z = jax.lax.stop_gradient(z)
  return -jnp.mean(jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1))


def simsiam_loss(p1: chex.Array, p2: chex.Array, z1: chex.Array, z2: chex.Array) -> chex.Array:
  """Symmetric SimSiam: 0.5 D(p1, sg(z2)) + 0.5 D(p2, sg(z1)) (Chen & He 2021, Sec. 3).

  A mean of the two directions, in [-1, 1]; its minimum -1 is reached when every prediction is
  parallel to the other view's projection. z1 and z2 never receive gradients.

  Args:
    p1: [B, d] predictions of the first views.
    p2: [B, d] predictions of the second views.
    z1: [B, d] projections of the first views.
    z2: [B, d] projections of the second views.

  Returns:
    A float32 scalar.
  """
  _check_pairs(p1, p2, z1, z2)
  return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
