"""Row-sharded contrastive losses: each device computes only its rows of the 2B x 2B matrix.

With the batch split over D devices (b = B / D images each, both views), device k holds rows
{k b .. (k+1) b - 1} of z1 and of z2. It L2-normalises them, all-gathers the normalised
embeddings of the whole batch (2B x d, the only communication besides the final sum), and forms
its [2b, 2B] block of log P (contrastive.log_transition_rows). Memory per device is O(b B)
instead of O(B^2), and the sum over devices of the row terms is the full loss exactly. The
all-gather's transpose (a reduce-scatter) brings each device the gradient of its own rows.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from rwl_jax.losses.contrastive import (l2_normalize, nt_xent_row_terms, rwl_row_terms)

RowTerms = Callable[[chex.Array, chex.Array, chex.Array, float], chex.Array]


def row_sharded_sum(row_terms: RowTerms, mesh: Mesh, axis_name: str
                    ) -> Callable[[chex.Array, chex.Array, float], chex.Array]:
  """(z1, z2, tau) -> sum over all 2B rows of row_terms, each device doing its own rows.

  z1, z2: [B, d] global arrays, split along B over the mesh axis `axis_name`.
  """
  spec = PartitionSpec(axis_name)

  def local_sum(z1: chex.Array, z2: chex.Array, temperature: float) -> chex.Array:
    chex.assert_equal_shape([z1, z2])
    z1, z2 = l2_normalize(z1), l2_normalize(z2)
    z1_all = jax.lax.all_gather(z1, axis_name, tiled=True)
    z2_all = jax.lax.all_gather(z2, axis_name, tiled=True)
    rows = jax.lax.axis_index(axis_name) * z1.shape[0] + jnp.arange(z1.shape[0])
    total = row_terms(jnp.concatenate([z1, z2]), jnp.concatenate([rows, rows + z1_all.shape[0]]),
                      jnp.concatenate([z1_all, z2_all]), temperature)
    return jax.lax.psum(total, axis_name)

  def loss(z1: chex.Array, z2: chex.Array, temperature: float) -> chex.Array:
    sharded = jax.shard_map(lambda a, b: local_sum(a, b, temperature), mesh=mesh,
                            in_specs=(spec, spec), out_specs=PartitionSpec())
    return sharded(z1.astype(jnp.float32), z2.astype(jnp.float32))

  return loss


def sharded_rwl_loss(mesh: Mesh, axis_name: str) -> Callable[[chex.Array, chex.Array, float], chex.Array]:
  """contrastive.rwl_loss, row-sharded over `axis_name`: sum_{i != j} (P_ij - T_ij)^2."""
  return row_sharded_sum(rwl_row_terms, mesh, axis_name)


def sharded_nt_xent_loss(mesh: Mesh, axis_name: str
                         ) -> Callable[[chex.Array, chex.Array, float], chex.Array]:
  """contrastive.nt_xent_loss, row-sharded: mean over the 2B rows of -log P_{i, pos(i)}."""
  total = row_sharded_sum(nt_xent_row_terms, mesh, axis_name)
  return lambda z1, z2, temperature: total(z1, z2, temperature) / (2 * z1.shape[0])
