"""rwl_jax: self-supervised representation learning in JAX around the random-walk Laplacian loss.

`rwl_jax.load_encoder(path)` reads an encoder `python -m rwl_jax.export` wrote (rwl_jax.export);
it is imported on first use, so `import rwl_jax` itself loads neither JAX nor Flax.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_encoder"]


def __getattr__(name: str):
  # PEP 562: the export module (JAX, Flax) loads only when load_encoder is asked for.
  if name == "load_encoder":
    from rwl_jax.tools.export import load_encoder  # pylint: disable=g-import-not-at-top

    return load_encoder
  raise AttributeError(f"module 'rwl_jax' has no attribute {name!r}")
