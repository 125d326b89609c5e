"""Encoder and head shapes, parameter counts, BatchNorm modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwl_jax.configs import common
from rwl_jax import models
from rwl_jax.errors import ConfigError
from rwl_jax.models import MLP, build_resnet


def count(module, kind=nnx.Param):
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, kind)))


def test_resnet18_parameter_count_and_output():
  model = build_resnet("resnet18", rngs=nnx.Rngs(0))
  # torchvision-style CIFAR ResNet-18 without its classifier: 11,168,832 parameters.
  assert count(model) == 11_168_832
  assert model.num_features == 512
  features = nnx.jit(lambda m, x: m(x))(model, jnp.zeros((2, 32, 32, 3)))
  assert features.shape == (2, 512) and features.dtype == jnp.float32


@pytest.mark.parametrize("name, expected_features", [("resnet34", 512), ("resnet50", 2048)])
def test_deeper_resnets_by_stage_sizes(name, expected_features):
  model = nnx.eval_shape(lambda: build_resnet(name, width=8, rngs=nnx.Rngs(0)))
  assert model.num_features == expected_features * 8 // 64
  params = count(model)
  shallow = count(nnx.eval_shape(lambda: build_resnet("resnet18", width=8, rngs=nnx.Rngs(0))))
  assert params > shallow


def test_reference_network_has_512_512_512_head():
  config = common.get_config()
  network = nnx.eval_shape(lambda: models.build_network(config.model, seed=0))
  head = network.projector
  assert [layer.kernel.shape for layer in head.layers] == [(512, 512), (512, 512)]
  assert count(network) == 11_168_832 + 2 * (512 * 512 + 512)


def test_network_outputs_features_and_projections_in_bfloat16():
  config = common.get_config()
  config.model.width = 8
  config.model.projector_dims = (32, 16)
  config.model.dtype = "bfloat16"
  network = models.build_network(config.model, seed=0)
  features, projections = nnx.jit(lambda m, x: m(x))(network, jnp.ones((4, 32, 32, 3)))
  assert features.shape == (4, 64) and projections.shape == (4, 16)
  assert projections.dtype == jnp.bfloat16
  # Parameters stay float32 whatever the compute dtype.
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(network, nnx.Param)))


def test_batchnorm_train_uses_batch_statistics_and_eval_running_ones():
  model = build_resnet("resnet18", width=4, rngs=nnx.Rngs(0))
  images = jax.random.normal(jax.random.key(0), (8, 32, 32, 3)) * 3 + 1
  before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))  # a copy, not a view
  forward = nnx.jit(lambda m, x: m(x))
  forward(model, images)  # train mode updates the running statistics
  after = nnx.state(model, nnx.BatchStat)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
  assert all(jax.tree.leaves(changed))
  model.eval()
  out_a = forward(model, images)
  out_b = forward(model, images[:1])
  np.testing.assert_allclose(out_a[:1], out_b, rtol=1e-4, atol=1e-5)  # no batch dependence


def test_mlp_layers_and_validation():
  head = MLP(8, (16, 4), batch_norm=True, rngs=nnx.Rngs(0))
  assert head(jnp.ones((3, 8))).shape == (3, 4)
  assert len(head.norms) == 1
  with pytest.raises(ConfigError, match="head dims"):
    MLP(8, (), rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match="unknown model.encoder"):
    build_resnet("resnet19", rngs=nnx.Rngs(0))


def _torch_style_conv(x, kernel, stride):
  """Cross-correlation with zero padding 1 on each side (torch.nn.Conv2d(k=3, s, p=1)), NHWC/HWIO,
  as a plain float64 loop: the reference the Flax convolutions must reproduce."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  kernel = np.asarray(kernel, np.float64)
  size = kernel.shape[0]
  out_h = (x.shape[1] - size) // stride + 1
  out_w = (x.shape[2] - size) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
  for row in range(out_h):
    for col in range(out_w):
      patch = x[:, row * stride:row * stride + size, col * stride:col * stride + size, :]
      out[:, row, col, :] = np.einsum("nhwc,hwco->no", patch, kernel)
  return out


@pytest.mark.parametrize("stride", [1, 2])
def test_3x3_convolutions_pad_like_pytorch(stride):
  # Two one-block stages: the stem (stride 1) and the downsampling block's conv1 (stride 2).
  model = models.resnet.CifarResNet(models.resnet.BasicBlock, (1, 1), width=4, rngs=nnx.Rngs(0))
  conv = model.stem_conv if stride == 1 else model.blocks[1].conv1
  assert conv.strides in (stride, (stride, stride))
  kernel = conv.kernel[...]
  x = jax.random.normal(jax.random.key(1), (1, 8, 8, kernel.shape[2]))
  reference = _torch_style_conv(x, kernel, stride)
  out = conv(x)
  assert out.shape == reference.shape
  assert np.max(np.abs(np.asarray(out, np.float64) - reference)) < 1e-5
  if stride == 2:
    # XLA's SAME pads (0, 1) for stride 2 on an even input: half a pixel off the reference.
    same = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert np.max(np.abs(np.asarray(same, np.float64) - reference)) > 1e-2
