"""model.batchnorm's fused BatchNorm (jnp custom_vjp and Pallas kernels, the latter through the
Pallas interpreter on this CPU) against flax's nnx.BatchNorm followed by the block's `+ residual`
and ReLU: outputs, gradients (input, scale, bias, residual), running statistics and eval mode,
layer by layer and through a tiny ResNet; the variable tree; the config and device checks."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.export
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rwl_jax.run import experiment
from rwl_jax import models, parallel
from rwl_jax.configs import common
from rwl_jax.errors import ConfigError
from rwl_jax.models import batchnorm
from rwl_jax.models.resnet import BasicBlock, Bottleneck, ResNet, build_resnet

FUSED = ("fused", "pallas")
# What follows the normalisation: nothing (a shortcut's BN), ReLU (bn1), residual + ReLU (bn2).
CASES = ("plain", "relu", "residual_relu")
# (N, H, W, C) and case: channels under one block and rows spanning 5 row tiles, the last one
# partial (pallas tiles of 64 x 64 here), every case; two channel tiles, the second partial, on
# 1x1 maps; two rows (dx is round-off around 0); one row (variance 0).
SHAPES_AND_CASES = tuple(((6, 7, 7, 40), case) for case in CASES) + (
    ((3, 1, 1, 130), "residual_relu"), ((2, 1, 1, 3), "relu"), ((1, 1, 1, 5), "plain"))



def raw(variable):
  """A variable's array: get_value() where flax has it, .value in the older flax of the floor."""
  return variable.get_value() if hasattr(variable, "get_value") else variable.value

def _layer(variant, channels, dtype, seed=0):
  """A BatchNorm with random scale, bias and running statistics (the same for every variant)."""
  bn = batchnorm.make(variant, channels, dtype=dtype, rngs=nnx.Rngs(0))
  keys = jax.random.split(jax.random.key(seed), 4)
  bn.scale[...] = 1 + 0.5 * jax.random.normal(keys[0], (channels,))
  bn.bias[...] = 0.5 * jax.random.normal(keys[1], (channels,))
  bn.mean[...] = 0.3 * jax.random.normal(keys[2], (channels,))
  bn.var[...] = jnp.exp(0.5 * jax.random.normal(keys[3], (channels,)))
  return bn


def _inputs(shape, dtype, seed=1):
  keys = jax.random.split(jax.random.key(seed), 3)
  # A mean of 1 and std 2 per channel, as a convolution's output might have.
  x = (2 * jax.random.normal(keys[0], shape) + 1).astype(dtype)
  residual = jax.random.normal(keys[1], shape).astype(dtype)
  cotangent = jax.random.normal(keys[2], shape)
  return x, residual, cotangent


@nnx.jit(static_argnums=4)
def _train_and_eval(bn, x, residual, cotangent, case):
  """Train-mode output and gradients (x, scale, bias, residual), the updated running statistics
  and the eval-mode output on those statistics, all as float32."""
  r = residual if case == "residual_relu" else None
  relu = case != "plain"

  def loss(bn, x, r):
    y = batchnorm.normalize(bn, x, residual=r, relu=relu)
    return jnp.sum(y.astype(jnp.float32) * cotangent), y

  (_, y), (grad_bn, dx, dr) = nnx.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(bn, x, r)
  bn.eval()
  y_eval = batchnorm.normalize(bn, x, residual=r, relu=relu)
  bn.train()
  out = {"y": y, "dx": dx, "dscale": grad_bn["scale"][...], "dbias": grad_bn["bias"][...],
         "mean": bn.mean[...], "var": bn.var[...], "y_eval": y_eval}
  if r is not None:
    out["dresidual"] = dr
  return {name: value.astype(jnp.float32) for name, value in out.items()}


@functools.cache  # flax's results serve both variants
def _results(variant, shape, dtype, case, compute_dtype=None):
  """_train_and_eval of a fresh layer; inputs drawn in `dtype`, computed in compute_dtype."""
  x, residual, cotangent = _inputs(shape, dtype)
  compute_dtype = compute_dtype or dtype
  bn = _layer(variant, shape[-1], compute_dtype)
  return _train_and_eval(bn, x.astype(compute_dtype), residual.astype(compute_dtype), cotangent,
                         case)


def _relative(a, b):
  """|a - b| / |b| in the Frobenius norm (|b| floored at 1e-6: an all-zero gradient)."""
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b))
               / max(float(np.linalg.norm(np.asarray(b))), 1e-6))


@pytest.mark.parametrize("variant", FUSED)
@pytest.mark.parametrize("shape, case", SHAPES_AND_CASES,
                         ids=lambda value: value if isinstance(value, str)
                         else "x".join(map(str, value)))
def test_float32_layer_equals_flax(variant, shape, case):
  expected = _results("flax", shape, jnp.float32, case)
  got = _results(variant, shape, jnp.float32, case)
  assert sorted(got) == sorted(expected)
  for name in expected:
    # Inputs, scale and cotangents are O(1): 1e-5 relative, and 1e-5 absolute for entries that
    # are round-off around 0 (dx of a 2-row batch).
    scale = max(float(np.max(np.abs(expected[name]))), 1.0)
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-5 * scale,
                               err_msg=f"{variant} {case} {shape}: {name}")


@pytest.mark.parametrize("variant", FUSED)
@pytest.mark.parametrize("case", ("relu", "residual_relu"))
def test_bfloat16_layer_within_bfloat16_round_off(variant, case):
  """In bfloat16 neither flax nor the fused layer is exact, so both are compared with float32
  arithmetic on the same (bf16-rounded) inputs. The fused layer rounds once (statistics,
  normalisation, residual add, ReLU and the backward's sums in float32): every output and
  gradient within one bf16 ulp (2**-8, relative, Frobenius norm; measured ~1.5e-3 to 2.4e-3).
  flax rounds its BN output before the add and carries part of the backward in bf16: measured
  2.4e-3 (y) to 3.1e-2 (dscale), so it is no tighter reference than this."""
  shape = (6, 7, 7, 40)
  truth = _results("flax", shape, jnp.bfloat16, case, compute_dtype=jnp.float32)
  flax_bf16 = _results("flax", shape, jnp.bfloat16, case)
  got = _results(variant, shape, jnp.bfloat16, case)
  for name in truth:
    error, flax_error = _relative(got[name], truth[name]), _relative(flax_bf16[name], truth[name])
    assert error <= 2**-8, (name, error, flax_error)


@nnx.jit
def _normalize_bf16(bn, x, residual):
  return batchnorm.normalize(bn, x, residual=residual, relu=True), bn.mean[...]


def test_bfloat16_output_with_statistics_accumulated_in_float32():
  """A bf16 input whose sum needs more than bf16's 8 bits (4095 ones and a 256: bf16 sums stall
  at 256): the batch mean is exact to float32; the output is bf16, the variables float32."""
  x = jnp.full((4096, 1, 1, 2), 1.0, jnp.bfloat16).at[0].set(256.0)
  for variant in FUSED:
    bn = batchnorm.make(variant, 2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    bn.momentum = 0.0  # the running mean becomes the batch mean
    y, mean = _normalize_bf16(bn, x, jnp.zeros_like(x))
    np.testing.assert_allclose(mean, (4095 + 256) / 4096, rtol=1e-7, err_msg=variant)
    assert y.dtype == jnp.bfloat16, variant
    assert all(raw(v).dtype == jnp.float32 for v in jax.tree.leaves(
        nnx.state(bn), is_leaf=lambda v: isinstance(v, nnx.Variable))), variant


@nnx.jit
def _eval_then_train(bn, x):
  """Eval-mode outputs on the whole batch and on its first row, the running mean after them,
  then the running mean after a train-mode call."""
  bn.eval()
  whole, first = bn(x, relu=True), bn(x[:1], relu=True)
  after_eval = bn.mean[...]
  bn.train()
  bn(x)
  return whole, first, after_eval, bn.mean[...]


@pytest.mark.parametrize("variant", FUSED)
def test_eval_mode_follows_module_eval_and_train(variant):
  """Module.eval() sets use_running_average (as on nnx.BatchNorm): the output then depends on
  the running statistics only, not on the batch, and leaves them alone; train() switches back."""
  x, _, _ = _inputs((4, 2, 2, 6), jnp.float32)
  bn = _layer(variant, 6, jnp.float32)
  before = np.array(bn.mean[...])
  whole, first, after_eval, after_train = _eval_then_train(bn, x)
  np.testing.assert_allclose(whole[:1], first, rtol=1e-6)
  np.testing.assert_array_equal(after_eval, before)
  assert not np.array_equal(after_train, before)
  bn.eval()
  assert bn.use_running_average


def _tiny_encoder(variant, block=BasicBlock, stage_sizes=(1, 1), width=4):
  """Two stages: a block with the identity shortcut (basic blocks) and one with a projection."""
  return ResNet(block, stage_sizes, width=width, batchnorm_variant=variant, rngs=nnx.Rngs(0))


def _variables(module):
  """{path: (variable type, shape, dtype)} of every variable of the module."""
  return {path: (type(variable).__name__, raw(variable).shape,
                 raw(variable).dtype)
          for path, variable in nnx.to_flat_state(nnx.state(module))}


def test_variable_tree_and_initial_values_equal_the_default():
  """The same variables (names, types, shapes, dtypes) as the default in ResNet-18 and ResNet-50
  (abstract), and the same initial values in the tiny nets (the same draws of the same rngs)."""
  for name in ("resnet18", "resnet50"):
    default, *fused = (nnx.eval_shape(lambda v=v: build_resnet(
        name, width=4, batchnorm_variant=v, rngs=nnx.Rngs(0))) for v in ("flax",) + FUSED)
    assert all(_variables(other) == _variables(default) for other in fused), name
  for block in (BasicBlock, Bottleneck):
    default = nnx.to_flat_state(nnx.state(_tiny_encoder("flax", block)))
    for variant in FUSED:
      fused = nnx.to_flat_state(nnx.state(_tiny_encoder(variant, block)))
      assert [path for path, _ in fused] == [path for path, _ in default]
      for (path, a), (_, b) in zip(default, fused):
        np.testing.assert_array_equal(raw(a), raw(b), err_msg=str(path))


@nnx.jit
def _loss_and_grads(model, images, cotangent):
  def loss(model):
    return jnp.sum(model(images).astype(jnp.float32) * cotangent)

  value, grads = nnx.value_and_grad(loss)(model)
  return value, grads, nnx.state(model, nnx.BatchStat)


@functools.cache  # the default's results serve both variants
def _tiny_resnet_results(variant, block):
  keys = jax.random.split(jax.random.key(3))
  images = jax.random.normal(keys[0], (4, 8, 8, 3))
  model = _tiny_encoder(variant, BasicBlock if block == "basic" else Bottleneck)
  cotangent = jax.random.normal(keys[1], (4, model.num_features))
  loss, grads, stats = _loss_and_grads(model, images, cotangent)
  return float(loss), dict(nnx.to_flat_state(grads)) | dict(nnx.to_flat_state(stats))


@pytest.mark.parametrize("variant, block", [
    ("fused", "basic"), ("pallas", "basic"),
    pytest.param("fused", "bottleneck", marks=pytest.mark.slow),
    pytest.param("pallas", "bottleneck", marks=pytest.mark.slow)])
def test_tiny_resnet_loss_gradients_and_statistics_equal_the_default(variant, block):
  """A two-stage width-4 ResNet of basic blocks (identity and projection shortcuts) or of
  bottlenecks, float32: the loss, every parameter's gradient and every updated running
  statistic equal the default's within float32 round-off (accumulated over 5-8 layers)."""
  (loss, flat), (loss_f, flat_f) = (_tiny_resnet_results(v, block) for v in ("flax", variant))
  assert abs(loss_f - loss) <= 1e-5 * abs(loss)
  assert sorted(flat) == sorted(flat_f)
  errors = {path: _relative(raw(flat_f[path]), raw(flat[path])) for path in flat}
  worst = max(errors, key=errors.get)
  assert errors[worst] < 1e-4, (worst, errors[worst])


def test_flax_variant_is_the_plain_nnx_batchnorm():
  model = nnx.eval_shape(lambda: _tiny_encoder("flax"))
  layers = [model.stem_bn, model.blocks[0].bn1, model.blocks[1].shortcut.layers[1]]
  assert all(type(layer) is nnx.BatchNorm for layer in layers)
  for variant in FUSED:
    model = nnx.eval_shape(lambda v=variant: _tiny_encoder(v))
    assert isinstance(model.blocks[1].shortcut.layers[1], batchnorm.FusedBatchNorm)
    assert model.blocks[1].bn2.implementation == variant


def test_config_field_is_validated_with_one_line():
  config = common.get_config()
  assert config.model.batchnorm == "flax"
  for variant in batchnorm.VARIANTS:
    config.model.batchnorm = variant
    experiment.validate_config(config)
  config.model.batchnorm = "fast"
  with pytest.raises(ConfigError) as error:
    experiment.validate_config(config)
  assert str(error.value) == ("unknown model.batchnorm 'fast'; choose one of "
                              "['flax', 'fused', 'pallas']")


def test_pallas_refuses_several_devices_and_other_backends():
  batchnorm.check_devices("pallas", 1)
  batchnorm.check_devices("fused", 8)
  with pytest.raises(ConfigError, match="one device, got a mesh of 2"):
    batchnorm.check_devices("pallas", 2)
  config = common.get_config()
  config.model.batchnorm, config.model.encoder = "pallas", "vit_tiny"
  models.check_devices(config.model, 2)  # a ViT has no BatchNorm
  with pytest.raises(ConfigError, match="not for 'tpu'"):
    batchnorm.check_backend("pallas", "tpu")
  batchnorm.check_backend("pallas", "gpu")


@pytest.mark.parametrize("dtype, shape, residual", [
    (jnp.bfloat16, (6, 7, 7, 40), True), (jnp.float32, (3, 1, 1, 130), False)])
def test_pallas_kernels_lower_to_triton_for_cuda(monkeypatch, dtype, shape, residual):
  """No GPU here, but the Pallas -> Triton lowering runs in Python: the train-mode forward and
  backward lower for CUDA to Triton kernels (power-of-two tiles, masked loads and stores; what
  Triton's compiler and the GPU then make of them is not checked here)."""
  monkeypatch.setattr(batchnorm, "_interpret", lambda: False)
  x = jax.ShapeDtypeStruct(shape, dtype)
  vector = jax.ShapeDtypeStruct(shape[-1:], jnp.float32)

  def grads(x, scale, bias, r):
    def loss(x, scale, bias, r):
      y, mean, var = batchnorm.batch_norm_train(x, scale, bias, r, True, 1e-5, dtype, "pallas")
      return jnp.sum(y.astype(jnp.float32)) + jnp.sum(mean + var)
    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3) if residual else (0, 1, 2))(
        x, scale, bias, r)

  try:
    exported = jax.export.export(
        jax.jit(grads), platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
            x, vector, vector, x if residual else None)
  except RuntimeError as error:
    if "No supported GPU devices found" not in str(error):
      raise
    # jax 0.12 lowers Pallas for CUDA only with a GPU (or an abstract one) present; 0.10 does not.
    pytest.skip(f"jax {jax.__version__} needs a GPU to lower Pallas kernels for CUDA")
  # Statistics, forward (y), the backward's sums, dx.
  assert exported.mlir_module().count("@__gpu$xla.gpu.triton(") == 4


# Runs in a fresh process: the device count is fixed when JAX starts.
_SHARDED = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec
    from rwl_jax.run import experiment
    from rwl_jax import parallel
    from rwl_jax.configs import common
    from rwl_jax.errors import ConfigError
    from rwl_jax.models import batchnorm

    mesh = parallel.make_mesh()
    x = 2 * jax.random.normal(jax.random.key(0), (8, 3, 3, 6)) + 1
    r = jax.random.normal(jax.random.key(1), (8, 3, 3, 6))

    @nnx.jit
    def grads(bn, x, r):
      loss = lambda bn, x, r: jnp.sum(jnp.sin(batchnorm.normalize(bn, x, residual=r, relu=True)))
      return nnx.grad(loss, argnums=(0, 1, 2))(bn, x, r), bn.mean[...], bn.var[...]

    outcome = {}
    for variant, inputs in (("flax", (x, r)), ("fused", jax.device_put(
        (x, r), NamedSharding(mesh, PartitionSpec(parallel.DATA_AXIS))))):
      bn = batchnorm.make(variant, 6, dtype=jnp.float32, rngs=nnx.Rngs(0))
      (grad_bn, dx, dr), mean, var = grads(bn, *inputs)
      outcome[variant] = [np.asarray(a) for a in (dx, dr, grad_bn["scale"][...],
                                                  grad_bn["bias"][...], mean, var)]
      if variant == "fused":
        devices = len(dx.sharding.device_set)
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(*outcome.values()))
    config = common.get_config()
    config.model.batchnorm = "pallas"
    try:
      experiment.build(config, mesh, steps_per_epoch=1)
      refused = None
    except ConfigError as error:
      refused = str(error)
    print("RESULT " + json.dumps({"difference": difference, "devices": devices,
                                  "refused": refused}))
""")


@pytest.mark.slow  # a fresh JAX process: ~8-20 s on 2 cores
def test_fused_statistics_span_a_sharded_batch_and_pallas_refuses_it():
  """On 2 simulated devices with the batch split between them, the fused layer's statistics
  and gradients are the whole batch's (equal to flax's on one device: GSPMD turns the jnp sums
  into an all-reduce); building a pallas experiment on that mesh is one ConfigError line."""
  from conftest import run_on_devices  # pylint: disable=g-import-not-at-top

  result = run_on_devices(_SHARDED, devices=2)
  assert result["devices"] == 2, result
  assert result["difference"] < 1e-5, result
  assert result["refused"] == ("model.batchnorm='pallas' runs on one device, got a mesh of 2; "
                               "use model.batchnorm='fused' (same fusion in jnp, global-batch "
                               "statistics)"), result


@pytest.mark.slow
def test_two_training_steps_through_the_experiment_builder_agree():
  """The real path (config -> experiment.build -> jitted train step, RWL loss, SGD) on a width-4
  ResNet-10: two steps with model.batchnorm='fused' and 'pallas' give the default's loss,
  parameters and running statistics within float32 round-off."""
  config = common.get_config()
  config.model.encoder, config.model.width = "resnet10", 4
  config.model.projector_dims = (16, 8)
  config.global_batch_size = 8
  rng = np.random.default_rng(0)
  batch = {k: rng.normal(size=(8, 16, 16, 3)).astype(np.float32) for k in ("view1", "view2")}
  mesh = parallel.make_mesh(jax.devices()[:1])
  outcome = {}
  for variant in batchnorm.VARIANTS:
    config.model.batchnorm = variant
    experiment.validate_config(config)
    built = experiment.build(config, mesh, steps_per_epoch=10)
    state = built.init_state()
    losses = []
    for _ in range(2):
      state, metrics = built.jitted_step(state, parallel.to_global(batch, mesh))
      losses.append(float(metrics["loss"]))
    outcome[variant] = losses, jax.tree.leaves((state.params, state.batch_stats))
  losses, leaves = outcome["flax"]
  for variant in FUSED:
    other_losses, other_leaves = outcome[variant]
    np.testing.assert_allclose(other_losses, losses, rtol=1e-5, err_msg=variant)
    worst = max(_relative(a, b) for a, b in zip(other_leaves, leaves))
    assert worst < 1e-4, (variant, worst)


@pytest.mark.slow  # a fresh interpreter, ~5 s
def test_bad_batchnorm_on_the_command_line_is_one_error_line(tmp_path):
  done = subprocess.run([sys.executable, "-m", "rwl_jax.main", "--config=cifar10_rwl",
                         f"--workdir={tmp_path}/run", "--config.model.batchnorm=fast"],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert errors == ["error: unknown model.batchnorm 'fast'; choose one of "
                    "['flax', 'fused', 'pallas']"], done.stderr[-3000:]
