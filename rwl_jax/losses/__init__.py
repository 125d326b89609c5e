"""Self-supervised losses: small pure functions of embeddings, formulas in their docstrings."""

from rwl_jax.losses.contrastive import (
    l2_normalize,
    log_transition_matrix,
    log_transition_rows,
    nt_xent_loss,
    nt_xent_row_terms,
    pair_target,
    random_walk_laplacian,
    rwl_loss,
    rwl_row_terms,
    transition_matrix,
)
from rwl_jax.losses.gsg import (
    gsg_assignment,
    gsg_select,
)
from rwl_jax.losses.predictive import (
    byol_loss,
    negative_cosine,
    normalized_mse,
    normalized_std,
    simsiam_loss,
)
from rwl_jax.losses.redundancy import (
    barlow_twins_loss,
    barlow_twins_terms,
    vicreg_loss,
    vicreg_terms,
)
from rwl_jax.losses.sharded import (
    row_sharded_sum,
    sharded_nt_xent_loss,
    sharded_rwl_loss,
)
