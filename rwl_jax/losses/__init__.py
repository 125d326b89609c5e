"""Self-supervised losses: small pure functions of embeddings, formulas in their docstrings."""

from rwl_jax.losses.contrastive import (
    l2_normalize,
    log_transition_matrix,
    nt_xent_loss,
    pair_target,
    random_walk_laplacian,
    rwl_loss,
    transition_matrix,
)
