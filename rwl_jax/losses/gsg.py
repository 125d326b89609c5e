"""Guided stop-gradient (GSG) pairing: per image, which view is predicted, which is the target.

Lee & Lee, "Implicit Contrastive Representation Learning with Guided Stop-gradient", NeurIPS 2023;
official code github.com/bych-lee/gsg (main_pretrain.py, train()). Each image A of the batch is
paired with a random image B (the official code draws B as a random permutation of the batch,
torch.randperm, so B can occasionally be A itself). Both images have two views with target
projections a_1, a_2 and b_1, b_2 (z; in BYOL the momentum encoder's, in SimSiam the online
encoder's under stop-gradient), unnormalised. The four cross distances

    d(a_i, b_j) = ||a_i - b_j||_2,   i, j in {1, 2},   in the order (1,1), (1,2), (2,1), (2,2),

pick the closest pair (i*, j*) per row (argmin; ties go to the first in that order, as
torch.argmin in the official code). a_i* and b_j* are the SOURCES: their predictions p go into
the loss. The other views a_{3-i*}, b_{3-j*} are the stop-gradient TARGETS. Pulling each source
toward its own image's other view moves the two closest views of different images apart, an
implicit contrastive (repelling) effect. The official per-row loss, averaged over the rows, is

    -1/2 [cos(p(a_i*), sg(a_{3-i*})) + cos(p(b_j*), sg(b_{3-j*}))]

so with this module, for SimSiam-GSG and BYOL-GSG alike (the official code uses the negative cosine
for both):

    assignment = gsg_assignment(z_a1, z_a2, z_b1, z_b2)
    p_a, p_b = jnp.stack([p_a1, p_a2]), jnp.stack([p_b1, p_b2])  # [2, B, d] each.
    z_a, z_b = jnp.stack([z_a1, z_a2]), jnp.stack([z_b1, z_b2])
    p_src_a, _, p_src_b, _ = gsg_select(p_a, p_b, assignment)
    _, z_tgt_a, _, z_tgt_b = gsg_select(z_a, z_b, assignment)
    loss = 0.5 * negative_cosine(p_src_a, z_tgt_a) + 0.5 * negative_cosine(p_src_b, z_tgt_b)

Everything is per row (no batch statistics) and branch-free, so it jits and shards as is.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def gsg_assignment(z_a1: chex.Array, z_a2: chex.Array, z_b1: chex.Array,
                   z_b2: chex.Array) -> chex.Array:
  """Per row, the views of A and of B forming the closest cross pair (the GSG sources).

  (i*, j*) = argmin_{i, j} ||a_i - b_j||_2 over (1,1), (1,2), (2,1), (2,2) in that order; on ties
  the first pair in that order wins (e.g. all four equal gives (1, 1); d(a_2, b_1) = d(a_2, b_2)
  below the others gives (2, 1)). Distances are taken in float32 on stop_gradient(z), and the
  result is an integer, so no gradient flows through the assignment.

  Args:
    z_a1: [B, d] target projections of the first views of images A.
    z_a2: [B, d] target projections of the second views of images A.
    z_b1: [B, d] target projections of the first views of the paired images B (row-aligned).
    z_b2: [B, d] target projections of the second views of the paired images B.

  Returns:
    An int32 array [B, 2]: column 0 is i* - 1, the 0-based view of A in the closest pair (its
    source; 1 - that is its target), column 1 is j* - 1, the same for B.
  """
  chex.assert_rank([z_a1, z_a2, z_b1, z_b2], 2)
  chex.assert_equal_shape([z_a1, z_a2, z_b1, z_b2])
  views_a = jax.lax.stop_gradient(jnp.stack([z_a1, z_a2]).astype(jnp.float32))  # [2, B, d]
  views_b = jax.lax.stop_gradient(jnp.stack([z_b1, z_b2]).astype(jnp.float32))
  # distance[i, j, r] = ||a_i - b_j|| of row r; the sqrt keeps float ties as in the official code.
  distance = jnp.sqrt(jnp.sum(jnp.square(views_a[:, None] - views_b[None, :]), axis=-1))
  flat = jnp.transpose(distance, (2, 0, 1)).reshape(-1, 4)  # [B, 4]: (1,1), (1,2), (2,1), (2,2).
  closest = jnp.argmin(flat, axis=1)  # First minimum on ties.
  return jnp.stack([closest // 2, closest % 2], axis=1).astype(jnp.int32)


def gsg_select(views_a: chex.Array, views_b: chex.Array,
               assignment: chex.Array) -> tuple[chex.Array, chex.Array, chex.Array, chex.Array]:
  """Gathers each row's source and target view of A and B from stacked views, without branching.

  source_a[r] = views_a[assignment[r, 0], r], target_a[r] = views_a[1 - assignment[r, 0], r], and
  the same for B with column 1. Call it on the stacked predictions p to get the sources' inputs and
  on the stacked target projections z to get the targets (see the module docstring). Gradients
  flow into the gathered rows only; the caller (negative_cosine) stops them on the targets.

  Args:
    views_a: [2, B, d] the two views of images A (any per-row arrays: p, z, ...).
    views_b: [2, B, d] the two views of images B.
    assignment: [B, 2] integers in {0, 1} from gsg_assignment.

  Returns:
    (source_a, target_a, source_b, target_b), each [B, d] in the dtype of the views.
  """
  chex.assert_rank([views_a, views_b, assignment], [3, 3, 2])
  chex.assert_equal_shape([views_a, views_b])
  chex.assert_axis_dimension(views_a, 0, 2)
  chex.assert_shape(assignment, (views_a.shape[1], 2))

  def pick(views, index):
    return jnp.take_along_axis(views, index[None, :, None], axis=0)[0]

  index_a = assignment[:, 0].astype(jnp.int32)
  index_b = assignment[:, 1].astype(jnp.int32)
  return (pick(views_a, index_a), pick(views_a, 1 - index_a),
          pick(views_b, index_b), pick(views_b, 1 - index_b))
