"""BatchNorm for the ResNets: flax's nnx.BatchNorm, or the same layer fused with its ReLU and
residual add, with a hand-written backward (model.batchnorm).

  "flax"    nnx.BatchNorm, followed by the block's own `+ residual` and ReLU (the default).
  "fused"   FusedBatchNorm: BatchNorm (+ residual) (+ ReLU) as one jax.custom_vjp written in jnp.
  "pallas"  FusedBatchNorm whose passes are Pallas kernels (Triton on a GPU; the Pallas
            interpreter on a CPU, which is how the tests run them). One device only: a
            pallas_call is opaque to GSPMD, which could not make its sums global-batch
            sums.

All three have the same variables (scale, bias: nnx.Param; mean, var: nnx.BatchStat; float32,
shape (C,)), the same running averages (momentum 0.9 on the biased batch variance, as flax) and
the same train/eval switch (`use_running_average`, set by Module.train()/eval() and nnx.view), so
checkpoints, export and evaluation do not see which one trained.

Train mode, over the M = N*H*W rows of each channel (x the input, r the residual, γ/β the scale
and bias, all statistics in float32 whatever the compute dtype):

  μ = Σx/M,  σ² = max(0, Σx²/M − μ²)  (flax's use_fast_variance: both sums in one read of x),
  rstd = 1/sqrt(σ² + ε),  x̂ = (x − μ)·rstd,  y = relu(γ·x̂ + β + r)  (in the compute dtype).

Backward, with g = dy·[y > 0] (the ReLU's mask; g = dy without ReLU):

  dβ = Σg,  dγ = Σ(g·x̂),  dr = g,
  dx = γ·rstd/M · (M·g − Σg − x̂·Σ(g·x̂)).

Why fuse (the layer is memory-bound: what counts is activation-sized tensors moved through HBM,
A = N·H·W·C elements; counted for flax from the optimised HLO of the bf16 ResNet-18 step on an
H200, for these passes by construction). flax already computes both statistics in float32 in one
read of x (use_fast_variance, one multi-output reduction) and XLA recomputes x̂ inside its
fusions, so the forward is the same 1 read (statistics) + 1 read (+1 for r) + 1 write (y) here.
The backward differs:
  BN + ReLU:           flax 4 reads + 2 writes (it writes the masked dy, then reads it back for
                       dx); here 4 reads + 1 write (Σ pass reads dy, x; dx pass reads dy, x and
                       recomputes the mask from x).
  BN + residual + ReLU: flax 7 reads + 2 writes (mask pass reads dy, r, x and writes g; Σ pass
                       reads g, x; dx pass reads g, x); here 5 reads + 2 writes (one pass reads
                       dy, y, x, writes g = dr and both sums; dx pass reads g, x). The mask comes
                       from y (kept alive anyway as the next convolution's input), not r.
The custom_vjp also keeps only x (compute dtype), μ and rstd (and y with a residual): no float32
activation (flax's autodiff residuals x − μ and x², which XLA then has to rematerialise).
Where a layer's output fans out (the stem and every block but the last feed the next block's
convolution and its residual), autodiff sums the two cotangents before this backward sees dy:
flax's fused mask pass reads both pieces; the Pallas passes need the sum written first (+1
read, +1 write), and the jnp ones only match flax's reads if XLA fuses the add into them. So
the saving is 1 A per BN + ReLU layer and 2 A per residual layer, less at fan-outs; the step
time it buys is unmeasured (no accelerator yet), hence "flax" stays the default.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from rwl_jax.errors import ConfigError

VARIANTS = ("flax", "fused", "pallas")
# PyTorch's momentum=0.1 and eps=1e-5, as the reference code's BatchNorm2d.
MOMENTUM = 0.9
EPSILON = 1e-5


def check_variant(name: str) -> None:
  if name not in VARIANTS:
    raise ConfigError(f"unknown model.batchnorm {name!r}; choose one of {list(VARIANTS)}")


def check_devices(name: str, num_devices: int) -> None:
  """The pallas kernels see one device's rows only (GSPMD cannot split a pallas_call), so their
  statistics would not be the global batch's: refused on a mesh of several devices."""
  if name == "pallas" and num_devices > 1:
    raise ConfigError(f"model.batchnorm='pallas' runs on one device, got a mesh of {num_devices}; "
                      f"use model.batchnorm='fused' (same fusion in jnp, global-batch statistics)")


def check_backend(name: str, backend: str | None = None) -> None:
  """The pallas kernels use Triton's masked loads: a GPU, or the interpreter on a CPU."""
  backend = backend or jax.default_backend()
  if name == "pallas" and backend not in ("gpu", "cpu"):
    raise ConfigError(f"model.batchnorm='pallas' has kernels for GPUs (and the CPU interpreter), "
                      f"not for {backend!r}; use model.batchnorm='fused'")


# ----------------------------------------------------------------------------------------------
# The four passes over the (M, C) view of x (a free reshape of NHWC), as jnp or as Pallas.
# Per-channel vectors are float32 (C,). `a` = γ·rstd, so γ·x̂ + β = (x − μ)·a + β.


class Passes(NamedTuple):
  # (x) -> (Σx, Σx²): one read of x.
  moments: Callable[..., tuple[jax.Array, jax.Array]]
  # (x, r | None, mean, a, bias, relu, dtype) -> y: reads x (and r), writes y.
  forward: Callable[..., jax.Array]
  # (x, dy, y | None, mean, rstd, a, bias, relu) -> (g | None, Σg, Σg·x̂): reads x, dy (and y);
  # writes g only when given y (a residual block: g is also the residual's gradient).
  grad_sums: Callable[..., tuple[jax.Array | None, jax.Array, jax.Array]]
  # (x, g, mean, rstd, a, bias, k2, k3, relu) -> dx = a·(g' − k2 − x̂·k3), g' = g masked by
  # the ReLU recomputed from x when relu (g not yet masked), else g: reads x, g; writes dx.
  grad_input: Callable[..., jax.Array]


def _pre_activation(x32, mean, a, bias):
  return (x32 - mean) * a + bias


def _jnp_moments(x):
  x32 = x.astype(jnp.float32)
  # Two sums of the same operand: XLA emits one multi-output reduction (one read of x).
  return jnp.sum(x32, axis=0), jnp.sum(x32 * x32, axis=0)


def _jnp_forward(x, r, mean, a, bias, relu, dtype):
  y = _pre_activation(x.astype(jnp.float32), mean, a, bias)
  if r is not None:
    y = y + r.astype(jnp.float32)
  return (jnp.maximum(y, 0.0) if relu else y).astype(dtype)


def _jnp_grad_sums(x, dy, y, mean, rstd, a, bias, relu):
  x32, g = x.astype(jnp.float32), dy.astype(jnp.float32)
  if relu:
    alive = y > 0 if y is not None else _pre_activation(x32, mean, a, bias) > 0
    g = jnp.where(alive, g, 0.0)
  x_hat = (x32 - mean) * rstd
  masked = g.astype(dy.dtype) if y is not None else None
  return masked, jnp.sum(g, axis=0), jnp.sum(g * x_hat, axis=0)


def _jnp_grad_input(x, g, mean, rstd, a, bias, k2, k3, relu):
  x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
  if relu:
    g32 = jnp.where(_pre_activation(x32, mean, a, bias) > 0, g32, 0.0)
  x_hat = (x32 - mean) * rstd
  return (a * (g32 - k2 - x_hat * k3)).astype(x.dtype)


JNP_PASSES = Passes(_jnp_moments, _jnp_forward, _jnp_grad_sums, _jnp_grad_input)


# Pallas: a 2-D grid of (block_rows, block_channels) tiles of the (M, C) view; row tiles first
# (the large dimension). The kernels index the whole arrays with explicit row/channel index
# vectors and masks, the pattern of jax's own Triton layer norm (pallas/ops/gpu/layer_norm.py):
# Triton wants power-of-two tiles, so a tile may overhang the array at the bottom or right edge,
# and every load and store is masked (Triton's masked load/store, which the interpreter also
# runs). Sums are per tile, written as (row tiles, C) partial sums that jnp adds up (a second,
# small reduction, as XLA's own two-stage reductions do). A tile holds <= 4096 elements (32
# float32 registers per thread at 4 warps).
_TILE_ELEMENTS = 4096
_MAX_BLOCK_CHANNELS = 128
_NUM_WARPS = 4


def _blocks(rows: int, channels: int) -> tuple[int, int]:
  block_channels = min(pl.next_power_of_2(channels), _MAX_BLOCK_CHANNELS)
  block_rows = min(pl.next_power_of_2(rows), max(_TILE_ELEMENTS // block_channels, 1))
  return block_rows, block_channels


def _interpret() -> bool:
  return jax.default_backend() == "cpu"


class _Tile(NamedTuple):
  """This program's tile: index vectors, masks and the array sizes."""
  rows: jax.Array  # (block_rows,) row indices
  channels: jax.Array  # (block_channels,) channel indices
  in_channels: jax.Array  # (block_channels,) channel < C
  mask: jax.Array  # (block_rows, block_channels) inside the array
  num_channels: int

  def load(self, ref):
    """The tile of an (M, C) array, float32, 0 outside the array."""
    return plgpu.load(ref.at[self.rows[:, None], self.channels[None, :]], mask=self.mask,
                      other=0.0).astype(jnp.float32)

  def store(self, ref, value):
    plgpu.store(ref.at[self.rows[:, None], self.channels[None, :]], value.astype(ref.dtype),
                mask=self.mask)

  def load_channels(self, ref):
    """The tile's part of a per-channel (C,) vector, as a (1, block_channels) row."""
    return plgpu.load(ref.at[self.channels], mask=self.in_channels, other=0.0)[None, :]

  def store_partial(self, ref, value):
    """A (block_channels,) partial sum into row program_id(0) of a flat (row tiles * C) array."""
    plgpu.store(ref.at[pl.program_id(0) * self.num_channels + self.channels], value,
                mask=self.in_channels)


def _tile(rows: int, channels: int, block_rows: int, block_channels: int) -> _Tile:
  row = pl.program_id(0) * block_rows + jnp.arange(block_rows)
  channel = pl.program_id(1) * block_channels + jnp.arange(block_channels)
  in_channels = channel < channels
  return _Tile(row, channel, in_channels, (row < rows)[:, None] & in_channels[None, :], channels)


def _tiled_call(kernel, inputs, outputs, rows, channels, partials=0):
  """pallas_call of kernel(*input refs, *output refs, tile=_Tile) over the (row tile, channel
  tile) grid. inputs: arrays (None skipped); outputs: ShapeDtypeStructs, the last `partials` of
  them (row tiles, C) float32 partial sums (passed to the kernel flat, returned 2-D)."""
  block_rows, block_channels = _blocks(rows, channels)
  grid = (pl.cdiv(rows, block_rows), pl.cdiv(channels, block_channels))
  flat = [jax.ShapeDtypeStruct((math.prod(out.shape),), out.dtype) if index >= len(outputs) -
          partials else out for index, out in enumerate(outputs)]

  def body(*refs):
    kernel(*refs, tile=_tile(rows, channels, block_rows, block_channels))

  # Triton's compiler parameters pick the Triton backend (a plain pallas_call on a GPU may get
  # Mosaic GPU, whose copies these whole-array, masked kernels do not fit).
  results = pl.pallas_call(body, grid=grid, out_shape=flat, interpret=_interpret(),
                           compiler_params=plgpu.CompilerParams(num_warps=_NUM_WARPS))(
      *[x for x in inputs if x is not None])
  return [result.reshape(out.shape) for result, out in zip(results, outputs)]


def _partials(rows: int, channels: int):
  return jax.ShapeDtypeStruct((pl.cdiv(rows, _blocks(rows, channels)[0]), channels), jnp.float32)


def _moments_kernel(x_ref, sum_ref, sum_sq_ref, *, tile):
  x = tile.load(x_ref)
  tile.store_partial(sum_ref, jnp.sum(x, axis=0))
  tile.store_partial(sum_sq_ref, jnp.sum(x * x, axis=0))


def _pallas_moments(x):
  rows, channels = x.shape
  partial = _partials(rows, channels)
  sums, sums_sq = _tiled_call(_moments_kernel, [x], [partial, partial], rows, channels,
                              partials=2)
  return jnp.sum(sums, axis=0), jnp.sum(sums_sq, axis=0)


def _forward_kernel(*refs, relu, has_residual, tile):
  if has_residual:
    x_ref, r_ref, mean_ref, a_ref, bias_ref, y_ref = refs
  else:
    (x_ref, mean_ref, a_ref, bias_ref, y_ref), r_ref = refs, None
  y = _pre_activation(tile.load(x_ref), tile.load_channels(mean_ref), tile.load_channels(a_ref),
                      tile.load_channels(bias_ref))
  if r_ref is not None:
    y = y + tile.load(r_ref)
  tile.store(y_ref, jnp.maximum(y, 0.0) if relu else y)


def _pallas_forward(x, r, mean, a, bias, relu, dtype):
  rows, channels = x.shape
  kernel = functools.partial(_forward_kernel, relu=relu, has_residual=r is not None)
  (y,) = _tiled_call(kernel, [x, r, mean, a, bias], [jax.ShapeDtypeStruct(x.shape, dtype)],
                     rows, channels)
  return y


def _grad_sums_kernel(*refs, relu, has_output, tile):
  if has_output:
    x_ref, dy_ref, y_ref, mean_ref, rstd_ref, a_ref, bias_ref, g_ref, sum_ref, sum_xhat_ref = refs
  else:
    x_ref, dy_ref, mean_ref, rstd_ref, a_ref, bias_ref, sum_ref, sum_xhat_ref = refs
  x, g, mean = tile.load(x_ref), tile.load(dy_ref), tile.load_channels(mean_ref)
  if relu:
    if has_output:
      alive = tile.load(y_ref) > 0
    else:
      alive = _pre_activation(x, mean, tile.load_channels(a_ref),
                              tile.load_channels(bias_ref)) > 0
    g = jnp.where(alive, g, 0.0)
  if has_output:
    tile.store(g_ref, g)
  x_hat = (x - mean) * tile.load_channels(rstd_ref)
  tile.store_partial(sum_ref, jnp.sum(g, axis=0))
  tile.store_partial(sum_xhat_ref, jnp.sum(g * x_hat, axis=0))


def _pallas_grad_sums(x, dy, y, mean, rstd, a, bias, relu):
  rows, channels = x.shape
  has_output = y is not None
  partial = _partials(rows, channels)
  outputs = ([jax.ShapeDtypeStruct(dy.shape, dy.dtype)] if has_output else []) + [partial] * 2
  kernel = functools.partial(_grad_sums_kernel, relu=relu, has_output=has_output)
  results = _tiled_call(kernel, [x, dy, y, mean, rstd, a, bias], outputs, rows, channels,
                        partials=2)
  g, (sums, sums_xhat) = (results[0] if has_output else None), results[-2:]
  return g, jnp.sum(sums, axis=0), jnp.sum(sums_xhat, axis=0)


def _grad_input_kernel(x_ref, g_ref, mean_ref, rstd_ref, a_ref, bias_ref, k2_ref, k3_ref, dx_ref,
                       *, relu, tile):
  x, g = tile.load(x_ref), tile.load(g_ref)
  mean, a = tile.load_channels(mean_ref), tile.load_channels(a_ref)
  if relu:
    g = jnp.where(_pre_activation(x, mean, a, tile.load_channels(bias_ref)) > 0, g, 0.0)
  x_hat = (x - mean) * tile.load_channels(rstd_ref)
  tile.store(dx_ref, a * (g - tile.load_channels(k2_ref) - x_hat * tile.load_channels(k3_ref)))


def _pallas_grad_input(x, g, mean, rstd, a, bias, k2, k3, relu):
  rows, channels = x.shape
  kernel = functools.partial(_grad_input_kernel, relu=relu)
  (dx,) = _tiled_call(kernel, [x, g, mean, rstd, a, bias, k2, k3],
                      [jax.ShapeDtypeStruct(x.shape, x.dtype)], rows, channels)
  return dx


PALLAS_PASSES = Passes(_pallas_moments, _pallas_forward, _pallas_grad_sums, _pallas_grad_input)
_PASSES = {"fused": JNP_PASSES, "pallas": PALLAS_PASSES}


# ----------------------------------------------------------------------------------------------
# The custom_vjp over those passes.


def _statistics(passes: Passes, x2, epsilon):
  rows = x2.shape[0]
  total, total_sq = passes.moments(x2)
  mean = total / rows
  var = jnp.maximum(total_sq / rows - mean * mean, 0.0)  # flax's clip of the round-off
  return mean, var, jax.lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def batch_norm_train(x, scale, bias, residual, relu: bool, epsilon: float, dtype: Any,
                     implementation: str):
  """Train-mode BatchNorm over every axis but the last: (relu(γ·x̂ + β [+ residual]) in `dtype`,
  batch mean, biased batch variance) (the last two float32, not differentiable; residual may be
  None). implementation: 'fused' (jnp) or 'pallas'."""
  return _forward(x, scale, bias, residual, relu, epsilon, dtype, implementation)[0]


def _forward(x, scale, bias, residual, relu, epsilon, dtype, implementation):
  passes = _PASSES[implementation]
  channels = x.shape[-1]
  x2 = x.reshape(-1, channels)
  r2 = None if residual is None else residual.reshape(-1, channels)
  mean, var, rstd = _statistics(passes, x2, epsilon)
  scale32, bias32 = scale.astype(jnp.float32), bias.astype(jnp.float32)
  a = scale32 * rstd
  y2 = passes.forward(x2, r2, mean, a, bias32, relu, dtype)
  # y is kept only where the backward reads the ReLU mask from it (a residual block).
  saved_y = y2 if relu and residual is not None else None
  # An empty array of the residual's dtype says there is one (residuals must be arrays).
  residual_like = None if residual is None else jnp.zeros((0,), residual.dtype)
  saved = (x2, saved_y, scale, bias, mean, rstd, residual_like)
  return (y2.reshape(x.shape), mean, var), saved


def _backward(relu, epsilon, dtype, implementation, saved, cotangents):
  del epsilon, dtype
  passes = _PASSES[implementation]
  x2, y2, scale, bias, mean, rstd, residual_like = saved
  dy = cotangents[0]  # the statistics' cotangents are zero: they leave through stop_gradient
  rows, channels = x2.shape
  shape = dy.shape
  dy2 = dy.reshape(rows, channels)
  scale32, bias32 = scale.astype(jnp.float32), bias.astype(jnp.float32)
  a = scale32 * rstd
  g2, sum_g, sum_g_xhat = passes.grad_sums(x2, dy2, y2, mean, rstd, a, bias32, relu)
  # With a residual and ReLU, g (masked) was written; otherwise grad_input masks dy itself.
  mask_in_grad_input = relu and g2 is None
  dx2 = passes.grad_input(x2, dy2 if g2 is None else g2, mean, rstd, a, bias32, sum_g / rows,
                          sum_g_xhat / rows, mask_in_grad_input)
  d_residual = None
  if residual_like is not None:
    d_residual = (dy2 if g2 is None else g2).reshape(shape).astype(residual_like.dtype)
  return (dx2.reshape(shape), sum_g_xhat.astype(scale.dtype), sum_g.astype(bias.dtype),
          d_residual)


batch_norm_train.defvjp(_forward, _backward)


def batch_norm_eval(x, scale, bias, mean, var, residual, *, relu: bool, epsilon: float,
                    dtype: Any):
  """Eval-mode BatchNorm on the running statistics (plain jnp: one elementwise pass that XLA
  fuses, differentiable by autodiff)."""
  a = scale.astype(jnp.float32) * jax.lax.rsqrt(var + epsilon)
  return _jnp_forward(x, residual, mean, a, bias.astype(jnp.float32), relu, dtype)


# ----------------------------------------------------------------------------------------------
# The layer.


class FusedBatchNorm(nnx.BatchNorm):
  """nnx.BatchNorm (the same variables, running averages and train/eval switch) whose call also
  takes the residual to add and the ReLU to apply after it, with the fused forward and backward
  above (implementation 'fused' or 'pallas'). Normalises over every axis but the last."""

  def __init__(self, num_features: int, *, implementation: str, momentum: float = MOMENTUM,
               epsilon: float = EPSILON, dtype: Any = None, rngs: nnx.Rngs):
    if implementation not in _PASSES:
      raise ConfigError(f"unknown FusedBatchNorm implementation {implementation!r}; choose one "
                        f"of {sorted(_PASSES)}")
    check_backend(implementation)
    super().__init__(num_features, momentum=momentum, epsilon=epsilon, dtype=dtype, rngs=rngs)
    self.implementation = implementation

  def __call__(self, x: jax.Array, residual: jax.Array | None = None, *, relu: bool = False,
               use_running_average: bool | None = None) -> jax.Array:
    use_running_average = (self.use_running_average if use_running_average is None
                           else use_running_average)
    dtype = self.dtype if self.dtype is not None else jnp.result_type(x, self.scale[...])
    if use_running_average:
      return batch_norm_eval(x, self.scale[...], self.bias[...], self.mean[...], self.var[...],
                             residual, relu=relu, epsilon=self.epsilon, dtype=dtype)
    y, mean, var = batch_norm_train(x, self.scale[...], self.bias[...], residual, relu,
                                    self.epsilon, dtype, self.implementation)
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * mean
    self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * var
    return y


def make(variant: str, features: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """The BatchNorm of model.batchnorm `variant` (momentum 0.9 = PyTorch's 0.1, eps 1e-5)."""
  check_variant(variant)
  if variant == "flax":
    return nnx.BatchNorm(features, momentum=MOMENTUM, epsilon=EPSILON, dtype=dtype, rngs=rngs)
  return FusedBatchNorm(features, implementation=variant, dtype=dtype, rngs=rngs)


def normalize(bn: nnx.BatchNorm, x: jax.Array, *, residual: jax.Array | None = None,
              relu: bool = False) -> jax.Array:
  """relu(bn(x) + residual), each part optional: one fused layer for a FusedBatchNorm, flax's
  layer followed by the add and the ReLU (as separate ops, exactly as before) otherwise."""
  if isinstance(bn, FusedBatchNorm):
    return bn(x, residual, relu=relu)
  y = bn(x)
  if residual is not None:
    y = y + residual
  return nnx.relu(y) if relu else y
