"""ResNets in Flax NNX (He et al. 2016) with the CIFAR or the ImageNet stem.

stem "cifar" (the default): conv 3x3 stride 1, BN, ReLU, no max-pool, for 32x32 images.
stem "imagenet": torchvision's conv 7x7 stride 2 pad 3, BN, ReLU, max-pool 3x3 stride 2 pad 1;
ResNet-50 with it is the 224-px encoder (23,508,032 parameters, 4.09 GMAC per 224x224 image).

ResNet-18/34 use basic blocks, ResNet-50 bottlenecks with the stride on the 3x3 convolution
(torchvision's "v1.5"); the output is the globally average-pooled feature (512-d for
ResNet-18/34, 2048-d for ResNet-50, both times width / 64). Every k x k convolution pads k // 2
pixels on every side whatever its stride, as PyTorch's Conv2d(k, p=k//2) does, so weights port
both ways: rwl_jax.tools.export maps stem_conv/stem_bn -> conv1/bn1, the flat list `blocks` ->
layer{stage+1}.{index} (stage_sizes says where each stage starts) and shortcut.layers.0/1 ->
downsample.0/1, kernels HWIO -> OIHW. BatchNorm normalises over every example of the batch it
sees; under jit with the batch sharded over devices that is the global batch. model.batchnorm
picks its implementation (models/batchnorm.py: flax's, or fused with the ReLU and the residual
add); every choice has the same variables.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rwl_jax.errors import ConfigError
from rwl_jax.models import batchnorm

# torchvision's ResNet initialisation (the reference code uses it): He-normal, fan-out.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def _batch_norm(features: int, dtype: Any, rngs: nnx.Rngs, variant: str) -> nnx.BatchNorm:
  return batchnorm.make(variant, features, dtype=dtype, rngs=rngs)


def _conv(in_features: int, out_features: int, kernel: int, stride: int, dtype: Any,
          rngs: nnx.Rngs) -> nnx.Conv:
  # PyTorch's padding=kernel//2 on every side. Not "SAME": for stride 2 on an even input XLA's
  # SAME pads (0, 1), which shifts every downsampled map by half a pixel relative to the
  # reference code (torch.nn.Conv2d(k=3, s=2, p=1)) and makes weights non-portable.
  pad = kernel // 2
  return nnx.Conv(in_features, out_features, (kernel, kernel), strides=stride,
                  padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=_conv_init,
                  dtype=dtype, rngs=rngs)


def _shortcut(in_features: int, out_features: int, stride: int, dtype: Any, rngs: nnx.Rngs,
              batchnorm_variant: str) -> nnx.Sequential | None:
  """A 1x1 projection where the block changes shape; None means the identity."""
  if stride == 1 and in_features == out_features:
    return None
  return nnx.Sequential(_conv(in_features, out_features, 1, stride, dtype, rngs),
                        _batch_norm(out_features, dtype, rngs, batchnorm_variant))


class BasicBlock(nnx.Module):
  """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

  expansion = 1

  def __init__(self, in_features: int, features: int, stride: int, *, dtype: Any, rngs: nnx.Rngs,
               batchnorm_variant: str = "flax"):
    out_features = features * self.expansion
    self.conv1 = _conv(in_features, features, 3, stride, dtype, rngs)
    self.bn1 = _batch_norm(features, dtype, rngs, batchnorm_variant)
    self.conv2 = _conv(features, out_features, 3, 1, dtype, rngs)
    self.bn2 = _batch_norm(out_features, dtype, rngs, batchnorm_variant)
    self.shortcut = _shortcut(in_features, out_features, stride, dtype, rngs, batchnorm_variant)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = batchnorm.normalize(self.bn1, self.conv1(x), relu=True)
    residual = x if self.shortcut is None else self.shortcut(x)
    return batchnorm.normalize(self.bn2, self.conv2(y), residual=residual, relu=True)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (strided) -> 1x1 convolutions, 4x expansion."""

  expansion = 4

  def __init__(self, in_features: int, features: int, stride: int, *, dtype: Any, rngs: nnx.Rngs,
               batchnorm_variant: str = "flax"):
    out_features = features * self.expansion
    self.conv1 = _conv(in_features, features, 1, 1, dtype, rngs)
    self.bn1 = _batch_norm(features, dtype, rngs, batchnorm_variant)
    self.conv2 = _conv(features, features, 3, stride, dtype, rngs)
    self.bn2 = _batch_norm(features, dtype, rngs, batchnorm_variant)
    self.conv3 = _conv(features, out_features, 1, 1, dtype, rngs)
    self.bn3 = _batch_norm(out_features, dtype, rngs, batchnorm_variant)
    self.shortcut = _shortcut(in_features, out_features, stride, dtype, rngs, batchnorm_variant)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = batchnorm.normalize(self.bn1, self.conv1(x), relu=True)
    y = batchnorm.normalize(self.bn2, self.conv2(y), relu=True)
    residual = x if self.shortcut is None else self.shortcut(x)
    return batchnorm.normalize(self.bn3, self.conv3(y), residual=residual, relu=True)


STEMS = ("cifar", "imagenet")


class ResNet(nnx.Module):
  """Stem, four stages (strides 1, 2, 2, 2; `width` * 2**stage channels), global average pool.

  Stem "cifar": conv3x3(width) stride 1 + BN + ReLU. Stem "imagenet": conv7x7(width) stride 2
  pad 3 + BN + ReLU + max-pool 3x3 stride 2 pad 1 (padding with -inf, as PyTorch's MaxPool2d).
  """

  def __init__(self, block: type[nnx.Module], stage_sizes: Sequence[int], *, width: int = 64,
               stem: str = "cifar", dtype: Any = jnp.float32, batchnorm_variant: str = "flax",
               rngs: nnx.Rngs):
    if stem not in STEMS:
      raise ConfigError(f"unknown model.stem {stem!r}; choose one of {list(STEMS)}")
    self.stem = stem
    self.stage_sizes = tuple(stage_sizes)
    self.stem_conv = _conv(3, width, 3 if stem == "cifar" else 7, 1 if stem == "cifar" else 2,
                           dtype, rngs)
    self.stem_bn = _batch_norm(width, dtype, rngs, batchnorm_variant)
    blocks = []
    in_features = width
    for stage, num_blocks in enumerate(stage_sizes):
      features = width * 2**stage
      for index in range(num_blocks):
        stride = 2 if stage > 0 and index == 0 else 1
        blocks.append(block(in_features, features, stride, dtype=dtype, rngs=rngs,
                            batchnorm_variant=batchnorm_variant))
        in_features = features * block.expansion
    self.blocks = nnx.List(blocks)
    self.num_features = in_features

  def __call__(self, images: jax.Array) -> jax.Array:
    x = batchnorm.normalize(self.stem_bn, self.stem_conv(images), relu=True)
    if self.stem == "imagenet":
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block in self.blocks:
      x = block(x)
    return jnp.mean(x, axis=(1, 2))


CifarResNet = ResNet  # its name before the ImageNet stem


ARCHITECTURES = {
    # One basic block per stage: the smallest of the family, for tests and smoke runs.
    "resnet10": (BasicBlock, (1, 1, 1, 1)),
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def build_resnet(name: str, *, width: int = 64, stem: str = "cifar", dtype: Any = jnp.float32,
                 batchnorm_variant: str = "flax", rngs: nnx.Rngs) -> ResNet:
  """A ResNet by name ('resnet10', 'resnet18', 'resnet34' or 'resnet50'), stem and BatchNorm
  implementation (model.batchnorm: 'flax', 'fused' or 'pallas')."""
  if name not in ARCHITECTURES:
    raise ConfigError(f"unknown model.encoder {name!r}; choose one of {sorted(ARCHITECTURES)}")
  if width < 1:
    raise ConfigError(f"model.width must be >= 1, got {width}")
  block, stage_sizes = ARCHITECTURES[name]
  return ResNet(block, stage_sizes, width=width, stem=stem, dtype=dtype,
                batchnorm_variant=batchnorm_variant, rngs=rngs)
