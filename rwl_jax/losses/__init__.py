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
from rwl_jax.losses.gsg import (
    gsg_assignment,
    gsg_select,
)
from rwl_jax.losses.predictive import (
    byol_loss,
    negative_cosine,
    normalized_mse,
    simsiam_loss,
)
from rwl_jax.losses.redundancy import (
    barlow_twins_loss,
    vicreg_loss,
    vicreg_terms,
)
