"""rwl_jax: self-supervised representation learning in JAX around the random-walk Laplacian loss."""

__version__ = "0.1.0"
