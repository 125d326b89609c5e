"""The benchmark's FLOP count (from layer shapes) and a tiny end-to-end benchmark run."""

import jax.numpy as jnp
import pytest
from flax import nnx

from conftest import tiny_config
from rwl_jax.tools import benchmark
from rwl_jax import tables
from rwl_jax.models.resnet import build_resnet


def resnet18_forward_flops(image_size=32, width=64):
  """Independent count from the CIFAR ResNet-18 layer table: 2 * K*K*Cin*Cout*Hout*Wout."""
  conv = lambda k, cin, cout, side: 2 * k * k * cin * cout * side * side
  total = conv(3, 3, width, image_size)
  cin, side = width, image_size
  for stage in range(4):
    cout = width * 2**stage
    if stage:
      side //= 2
    for block in range(2):
      total += conv(3, cin, cout, side) + conv(3, cout, cout, side)
      if block == 0 and stage:
        total += conv(1, cin, cout, side)  # projection shortcut
      cin = cout
  return total


def test_conv_and_dense_flops():
  conv = nnx.Conv(3, 5, (3, 3), strides=2, padding="SAME", rngs=nnx.Rngs(0))
  graph, state = nnx.split(conv)
  flops = benchmark.count_flops(lambda s, x: nnx.merge(graph, s)(x), state, jnp.ones((2, 8, 8, 3)))
  assert flops == 2 * 2 * 4 * 4 * 5 * 3 * 3 * 3
  assert benchmark.count_flops(lambda a, b: a @ b, jnp.ones((4, 6)), jnp.ones((6, 7))) == 2 * 4 * 6 * 7


def test_resnet18_forward_count_matches_layer_table():
  model = build_resnet("resnet18", rngs=nnx.Rngs(0))
  graph, state = nnx.split(model)
  flops = benchmark.count_flops(lambda s, x: nnx.merge(graph, s)(x), state, jnp.ones((1, 32, 32, 3)))
  assert flops == resnet18_forward_flops()  # 1.11 GFLOP (0.56 GMAC) per 32x32 image
  assert abs(flops / 1e9 - 1.1108) < 1e-3


@pytest.mark.slow  # compiles ResNet-18 benchmark steps
@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_benchmark_step_reports_consistent_figures(cifar_dir, tmp_path, augment_on):
  config = tiny_config(cifar_dir, tmp_path)
  config.model.encoder = "resnet18"  # the FLOP count below is ResNet-18's
  config.data.augment_on = augment_on  # device: gather and JAX augmentation inside the step
  row = benchmark.benchmark_step(config, steps=2, warmup=1)
  assert row["mode"] == f"step ({augment_on} views)"
  assert row["images_per_second"] > 0 and row["compile_seconds"] > 0
  assert abs(row["ms_per_step"] - 1e3 * config.global_batch_size / row["images_per_second"]) < 1e-6
  # A training step costs about 3 forward passes of the encoder, for each of the two views.
  forward = resnet18_forward_flops(width=config.model.width)
  assert 5.5 * forward < row["gflop_per_image"] * 1e9 < 8.0 * forward
  table = tables.format_table([row], benchmark.COLUMNS)
  assert table.splitlines()[0].startswith("mode | images_per_second")


def test_benchmark_pipeline(cifar_dir, tmp_path):
  config = tiny_config(cifar_dir, tmp_path)
  row = benchmark.benchmark_pipeline(config, steps=3, warmup=1)
  assert row["images_per_second"] > 0 and row["host_cores"] >= 1
