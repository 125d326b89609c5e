"""Vision Transformers in Flax NNX (Dosovitskiy et al. 2021), laid out as timm's ViT.

    patches  = Conv(p x p, stride p)(images)                          [B, (S/p)**2, D]
    x        = concat(cls_token, patches) + pos_embed                  [B, N = (S/p)**2 + 1, D]
    x        = x + attn(norm1(x));  x = x + mlp(norm2(x))              (pre-LN blocks, x depth)
    features = norm(x)[:, 0]                                           [B, D], the class token

attn: qkv = Linear(D, 3D), H heads of D/H, softmax(q k^T / sqrt(D/H)) v, proj = Linear(D, D);
mlp: Linear(D, 4D), exact GELU, Linear(4D, D); LayerNorm epsilon 1e-6; no dropout, no
BatchNorm (so the network's batch_stats hold only the heads' BatchNorms, if any). The names
(patch_embed, cls_token, pos_embed, blocks.i.norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2, norm) are timm's; kernels are [in, out] where timm's weights are [out, in].

Sizes by name at model.width = 64, the head dimension of every size here (ViT-Ti/S/B):
vit_tiny D 192, 3 heads; vit_small D 384, 6 heads; vit_base D 768, 12 heads; depth 12 each.
model.width scales the head dimension (D = heads * width), as it scales the ResNets' channels:
vit_small at width 8 is D 48, 6 heads of 8. ViT-S/16 at 224 px has 21,665,664 parameters
(timm's vit_small_patch16_224, 22,050,664, less its 1000-class head) and 4.6 GMAC per image.
Softmax runs in float32 whatever the compute dtype; parameters stay float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rwl_jax.errors import ConfigError

# (heads, depth) by name; D = heads * width, MLP hidden 4D.
ARCHITECTURES = {
    "vit_tiny": (3, 12),
    "vit_small": (6, 12),
    "vit_base": (12, 12),
}

# timm's initialisation: truncated normal std 0.02 for every Linear, the position embedding and
# (with Jax-style init) the class token; zero biases.
_trunc_normal = nnx.initializers.truncated_normal(stddev=0.02)


def _linear(in_features: int, out_features: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(in_features, out_features, kernel_init=_trunc_normal, dtype=dtype, rngs=rngs)


def _layer_norm(features: int, dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(features, epsilon=1e-6, dtype=dtype, rngs=rngs)


class Attention(nnx.Module):
  """Multi-head self-attention: qkv = Linear(D, 3D) split [3, heads, D/heads], proj = Linear."""

  def __init__(self, dim: int, heads: int, *, dtype: Any, rngs: nnx.Rngs):
    self.heads = heads
    self.qkv = _linear(dim, 3 * dim, dtype, rngs)
    self.proj = _linear(dim, dim, dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, tokens, dim = x.shape
    head_dim = dim // self.heads
    # timm's order of the 3D outputs: (q, k, v) x heads x head_dim.
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
    # Softmax in float32: bf16 logits lose the small weights of long rows.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tokens, dim)
    return self.proj(out)


class Mlp(nnx.Module):
  """Linear(D, hidden), exact GELU (PyTorch's nn.GELU default), Linear(hidden, D)."""

  def __init__(self, dim: int, hidden: int, *, dtype: Any, rngs: nnx.Rngs):
    self.fc1 = _linear(dim, hidden, dtype, rngs)
    self.fc2 = _linear(hidden, dim, dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(nnx.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
  """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

  def __init__(self, dim: int, heads: int, hidden: int, *, dtype: Any, rngs: nnx.Rngs):
    self.norm1 = _layer_norm(dim, dtype, rngs)
    self.attn = Attention(dim, heads, dtype=dtype, rngs=rngs)
    self.norm2 = _layer_norm(dim, dtype, rngs)
    self.mlp = Mlp(dim, hidden, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class VisionTransformer(nnx.Module):
  """Patch embedding, class token, learned position embeddings, pre-LN blocks, final LayerNorm;
  the output is the class token after the final LayerNorm ([B, dim])."""

  def __init__(self, *, dim: int, depth: int, heads: int, mlp_dim: int, patch_size: int,
               image_size: int, dtype: Any = jnp.float32, rngs: nnx.Rngs):
    if patch_size < 1 or image_size % patch_size:
      raise ConfigError(f"data.image_size {image_size} must be a multiple of model.patch_size "
                        f"{patch_size} (the ViT cuts the image into whole patches)")
    if dim % heads:
      raise ConfigError(f"the ViT's dimension {dim} must be a multiple of its {heads} heads")
    self.patch_size = patch_size
    self.image_size = image_size
    num_patches = (image_size // patch_size) ** 2
    self.patch_embed = nnx.Conv(3, dim, (patch_size, patch_size), strides=patch_size,
                                padding="VALID", dtype=dtype, rngs=rngs)
    self.cls_token = nnx.Param(_trunc_normal(rngs.params(), (1, 1, dim), jnp.float32))
    self.pos_embed = nnx.Param(_trunc_normal(rngs.params(), (1, num_patches + 1, dim),
                                             jnp.float32))
    self.blocks = nnx.List([Block(dim, heads, mlp_dim, dtype=dtype, rngs=rngs)
                            for _ in range(depth)])
    self.norm = _layer_norm(dim, dtype, rngs)
    self.num_features = dim

  def __call__(self, images: jax.Array) -> jax.Array:
    patches = self.patch_embed(images)  # [B, S/p, S/p, D]
    batch, _, _, dim = patches.shape
    patches = patches.reshape(batch, -1, dim)
    dtype = patches.dtype
    cls = jnp.broadcast_to(self.cls_token[...].astype(dtype), (batch, 1, dim))
    x = jnp.concatenate([cls, patches], axis=1) + self.pos_embed[...].astype(dtype)
    for block in self.blocks:
      x = block(x)
    return self.norm(x[:, 0])


def build_vit(name: str, *, width: int = 64, patch_size: int, image_size: int,
              dtype: Any = jnp.float32, depth: int | None = None,
              rngs: nnx.Rngs) -> VisionTransformer:
  """A ViT by name ('vit_tiny', 'vit_small', 'vit_base'): heads * width dimensions, MLP 4x.

  depth overrides the architecture's 12 blocks (the tests use 1).
  """
  if name not in ARCHITECTURES:
    raise ConfigError(f"unknown model.encoder {name!r}; choose one of {sorted(ARCHITECTURES)}")
  if width < 1:
    raise ConfigError(f"model.width must be >= 1, got {width}")
  heads, default_depth = ARCHITECTURES[name]
  dim = heads * width
  return VisionTransformer(dim=dim, depth=default_depth if depth is None else depth, heads=heads,
                           mlp_dim=4 * dim, patch_size=patch_size, image_size=image_size,
                           dtype=dtype, rngs=rngs)
