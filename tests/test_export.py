"""Exported encoders: round trips through every format, PyTorch loading the torchvision layout,
and the command line's mistakes as one line each.

The PyTorch checks need torch (the `torch` extra; CI's first step installs it and sets
RWL_REQUIRE_TORCH=1, which turns a missing torch into a failure instead of a skip).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rwl_jax
from conftest import REPO, tiny_config
from rwl_jax.tools import export
from rwl_jax import models
from rwl_jax.configs import common
from rwl_jax.errors import ConfigError


def require_torch():
  if os.environ.get("RWL_REQUIRE_TORCH") == "1":
    import torch  # pylint: disable=g-import-not-at-top  # must be there: fail, do not skip

    return torch
  return pytest.importorskip("torch")


def model_config(encoder="resnet18", image_size=32, **fields):
  config = common.get_config()
  config.model.encoder = encoder
  config.model.update(fields)
  config.data.image_size = image_size
  return config


def random_encoder(config, depth=None):
  """The encoder a config describes with random values in every variable, BatchNorm statistics
  included (so a mix-up of mean, var, scale or bias shows in the features), in eval mode.

  Filled from NumPy rather than initialised by JAX: eager initialisers compile one small program
  per shape, seconds per model on a CPU. Kernels He-scaled, N(0, 2 / fan_in); class token and
  position embeddings N(0, 0.02^2); every vector (BatchNorm and LayerNorm scale, bias, mean, var,
  dense biases) uniform in [0.5, 1.5], positive as a variance must be.
  """
  encoder = nnx.eval_shape(lambda: models.build_encoder(
      config.model, image_size=config.data.image_size, rngs=nnx.Rngs(0), depth=depth))
  rng = np.random.default_rng(0)

  def fill(leaf):
    if leaf.ndim == 1:
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    scale = 0.02 if leaf.ndim == 3 else np.sqrt(2.0 / fan_in)
    return jnp.asarray(rng.normal(0.0, scale, leaf.shape), leaf.dtype)

  nnx.update(encoder, jax.tree.map(fill, nnx.state(encoder)))
  encoder.eval()
  return encoder


@pytest.fixture(scope="module")
def resnet18_cifar():
  """ResNet-18 at width 8 with the CIFAR stem: one model, one compiled forward, for the fast
  round trips and the PyTorch check."""
  config = model_config("resnet18", width=8)
  return config, random_encoder(config)


forward = nnx.jit(lambda module, images: module(images))


# ---------------------------------------------------------------------------------------------
# Fast: files from encoders built here.


def test_every_format_round_trips_bit_identically(resnet18_cifar, tmp_path):
  config, encoder = resnet18_cifar
  images = jax.random.normal(jax.random.key(2), (3, 32, 32, 3))
  expected = np.asarray(forward(encoder, images))
  for fmt in export.FORMATS:
    path = export.save_encoder(encoder, export.describe(config, step=5), tmp_path / fmt, fmt)
    loaded = rwl_jax.load_encoder(str(path))
    assert np.array_equal(np.asarray(forward(loaded, images)), expected), fmt
    assert loaded.description["encoder"] == "resnet18" and loaded.description["step"] == 5
    assert loaded.mean == tuple(config.augment.mean) and loaded.std == tuple(config.augment.std)
    assert loaded.num_features == 64
  # The description is readable by any safetensors reader, one metadata key per field.
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top

  with safe_open(str(tmp_path / "safetensors"), framework="np") as opened:
    metadata = opened.metadata()
    assert opened.get_tensor("stem_bn.var").shape == (8,)
  assert metadata["encoder"] == "resnet18" and metadata["stem"] == "cifar"
  assert json.loads(metadata["mean"]) == list(config.augment.mean)
  assert json.loads(metadata["width"]) == 8 and metadata["format"] == "rwl_jax.encoder"


def test_vit_round_trips_and_has_no_torchvision_layout(tmp_path):
  config = model_config("vit_tiny", image_size=16, width=4, patch_size=8)
  encoder = random_encoder(config, depth=1)
  description = export.describe(config, depth=1)
  images = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
  expected = np.asarray(forward(encoder, images))
  for fmt in ("safetensors", "msgpack"):
    loaded = rwl_jax.load_encoder(export.save_encoder(encoder, description, tmp_path / fmt, fmt))
    assert len(loaded.encoder.blocks) == 1
    assert np.array_equal(np.asarray(forward(loaded, images)), expected), fmt
  with pytest.raises(ConfigError, match="^the torchvision format holds ResNets only, not a "
                                        "VisionTransformer; export it as safetensors or msgpack$"):
    export.save_encoder(encoder, description, tmp_path / "tv", "torchvision")


def test_preprocess_is_the_runs_normalisation(resnet18_cifar):
  config, encoder = resnet18_cifar
  loaded = export.LoadedEncoder(encoder, export.describe(config))
  images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
  expected = (images / 255.0 - np.array(config.augment.mean)) / np.array(config.augment.std)
  np.testing.assert_allclose(loaded.preprocess(images), expected, rtol=1e-6, atol=1e-6)


def _torch_resnet(torch, block: str, stage_sizes, width: int, stem: str):
  """torchvision's ResNet written out (same module names, no fc): conv1/bn1/relu/maxpool,
  layer1-4 of BasicBlock or Bottleneck (stride on the 3x3, downsample = conv1x1 + BN), avgpool.
  The CIFAR stem is conv1 3x3 stride 1 and maxpool = Identity, as the CIFAR ports do."""
  nn = torch.nn

  class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.relu = nn.ReLU()
      self.downsample = None
      if stride != 1 or inplanes != planes:
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                        nn.BatchNorm2d(planes))

    def forward(self, x):
      out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
      return self.relu(out + (x if self.downsample is None else self.downsample(x)))

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.relu = nn.ReLU()
      self.downsample = None
      if stride != 1 or inplanes != planes * 4:
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                        nn.BatchNorm2d(planes * 4))

    def forward(self, x):
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      return self.relu(out + (x if self.downsample is None else self.downsample(x)))

  class ResNet(nn.Module):
    def __init__(self):
      super().__init__()
      kind = BasicBlock if block == "basic" else Bottleneck
      if stem == "cifar":
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.maxpool = nn.Identity()
      else:
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
      self.bn1 = nn.BatchNorm2d(width)
      self.relu = nn.ReLU()
      inplanes = width
      for stage, size in enumerate(stage_sizes):
        layers = []
        for index in range(size):
          layers.append(kind(inplanes, width * 2**stage, 2 if stage and not index else 1))
          inplanes = width * 2**stage * kind.expansion
        setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
      self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      for stage in range(len(stage_sizes)):
        x = getattr(self, f"layer{stage + 1}")(x)
      return torch.flatten(self.avgpool(x), 1)

  return ResNet()


def pytorch_difference(path, images) -> float:
  """max |PyTorch features - JAX features| of a torchvision-format file (ResNet-18/50), PyTorch
  loading it with strict=True into the module tree above, both in eval mode."""
  torch = require_torch()
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  loaded = rwl_jax.load_encoder(str(path))
  description = loaded.description
  block, stages = {"resnet18": ("basic", (2, 2, 2, 2)),
                   "resnet50": ("bottleneck", (3, 4, 6, 3))}[description["encoder"]]
  model = _torch_resnet(torch, block, stages, description["width"], description["stem"])
  model.load_state_dict({name: torch.from_numpy(value)
                         for name, value in load_file(str(path)).items()}, strict=True)
  model.eval()
  with torch.no_grad():
    expected = model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()
  features = np.asarray(forward(loaded, jnp.asarray(images)))
  assert features.shape == expected.shape
  return float(np.max(np.abs(features - expected)))


@pytest.mark.parametrize("stem, image_size", [("cifar", 32), ("imagenet", 64)])
def test_pytorch_loads_the_torchvision_layout(stem, image_size, resnet18_cifar, tmp_path):
  config, encoder = resnet18_cifar
  if stem == "imagenet":
    config = model_config("resnet18", image_size=image_size, width=8, stem=stem)
    encoder = random_encoder(config)
  path = export.save_encoder(encoder, export.describe(config),
                             tmp_path / "resnet18_torchvision.safetensors", "torchvision")
  images = np.random.default_rng(3).normal(size=(4, image_size, image_size, 3)).astype(np.float32)
  difference = pytorch_difference(path, images)
  scale = float(np.max(np.abs(np.asarray(forward(encoder, jnp.asarray(images))))))
  print(f"ResNet-18 (width 8, {stem} stem): max |PyTorch - JAX| = {difference:.2e} "
        f"(features up to {scale:.2f})")
  assert difference < 1e-4 * max(scale, 1.0), difference


def test_library_mistakes_are_one_line(tmp_path):
  with pytest.raises(ConfigError, match=r"config.json not found: --workdir must be"):
    export.export_run(tmp_path / "missing")
  config = model_config("vit_small", patch_size=4)
  (tmp_path / "vit").mkdir()
  (tmp_path / "vit" / "config.json").write_text(config.to_json_best_effort())
  with pytest.raises(ConfigError, match=r"^--format=torchvision is torchvision's ResNet state "
                                        r"dict; .* holds a vit_small encoder"):
    export.export_run(tmp_path / "vit", fmt="torchvision")
  with pytest.raises(ConfigError, match=r"^no checkpoint in .*checkpoints: the run has not"):
    export.export_run(tmp_path / "vit", fmt="safetensors")
  with pytest.raises(ConfigError, match=r"^unknown --format 'onnx'; choose one of"):
    export.export_run(tmp_path / "vit", fmt="onnx")
  with pytest.raises(ConfigError, match=r"not found: give a file written by"):
    rwl_jax.load_encoder(tmp_path / "nothing.safetensors")
  (tmp_path / "junk.bin").write_bytes(b"not an encoder at all")
  with pytest.raises(ConfigError, match=r"is neither a safetensors nor a msgpack encoder file"):
    rwl_jax.load_encoder(tmp_path / "junk.bin")


# ---------------------------------------------------------------------------------------------
# Slow: a trained run, exported from the command line.


def run_export(*flags, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "rwl_jax.export", *flags], cwd=cwd,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.fixture(scope="module")
def trained_run(cifar_dir, tmp_path_factory):
  """A ResNet-18 (width 8) trained for one epoch of 2 steps on real CIFAR-10 images."""
  from rwl_jax import train  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("export")
  config = tiny_config(cifar_dir, root / "cache")
  config.model.encoder = "resnet18"
  config.num_epochs = 1
  config.data.max_train_examples = 64
  config.data.max_eval_examples = 64
  config.eval.linear_epochs = 1
  config.eval.probe_batch_size = 0
  train.train_and_evaluate(config, str(root / "work"))
  return root / "work"


@pytest.mark.slow
def test_command_line_export_matches_the_runs_encoder(trained_run, tmp_path):
  from rwl_jax.evaluate.run import load_run  # pylint: disable=g-import-not-at-top

  run = load_run(trained_run)
  reference = nnx.merge(run.experiment.defs.eval, run.state.params, run.state.batch_stats).encoder
  images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  written = {}
  for fmt in export.FORMATS:
    done = run_export(f"--workdir={trained_run}", f"--format={fmt}")
    assert done.returncode == 0, done.stderr[-2000:]
    written[fmt] = done.stdout.strip().splitlines()[-1]
  assert written["safetensors"] == str(trained_run / f"encoder_step_{run.step}.safetensors")
  assert written["torchvision"].endswith(f"encoder_step_{run.step}_torchvision.safetensors")
  for fmt, path in written.items():
    loaded = rwl_jax.load_encoder(path)
    x = loaded.preprocess(images)
    # Bit-identical to the run's own eval-mode encoder on the same normalised images...
    assert np.array_equal(np.asarray(forward(loaded, x)), np.asarray(forward(reference, x))), fmt
    assert loaded.description["step"] == run.step and loaded.description["method"] == "rwl"
    # ... and to the features the run's evaluation computes from the uint8 images.
    features, _ = run.experiment.features(run.state.params, run.state.batch_stats,
                                          jnp.asarray(images), jnp.zeros(8))
    np.testing.assert_allclose(np.asarray(forward(loaded, x)), np.asarray(features), rtol=1e-5,
                               atol=1e-5)
  # An explicit --out and --step.
  out = tmp_path / "sub" / "encoder.msgpack"
  done = run_export(f"--workdir={trained_run}", f"--step={run.step}", "--format=msgpack",
                    f"--out={out}")
  assert done.returncode == 0 and out.is_file(), done.stderr[-2000:]
  # PyTorch with the trained statistics and weights.
  difference = pytorch_difference(written["torchvision"], np.asarray(loaded.preprocess(images)))
  print(f"trained ResNet-18 (width 8): max |PyTorch - JAX| = {difference:.2e}")
  assert difference < 1e-4, difference


@pytest.mark.slow
def test_export_reads_no_data(trained_run, tmp_path):
  """A checkpoint moved away from its dataset exports the same bytes: only the state is read."""
  moved = tmp_path / "moved"
  shutil.copytree(trained_run, moved)
  saved = json.loads((moved / "config.json").read_text())
  saved["data"]["image_dir"] = str(tmp_path / "no_such_dataset")
  (moved / "config.json").write_text(json.dumps(saved))
  here = export.export_run(trained_run, fmt="safetensors", out=tmp_path / "here.safetensors")
  there = export.export_run(moved, fmt="safetensors", out=tmp_path / "there.safetensors")
  # (Compared through the reader: safetensors does not fix the order of its JSON header.)
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  with safe_open(str(here), "numpy") as a, safe_open(str(there), "numpy") as b:
    assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
    for name in a.keys():
      assert np.array_equal(a.get_tensor(name), b.get_tensor(name)), name


@pytest.mark.slow
@pytest.mark.parametrize("case, said", [
    ("missing", r"config.json not found: --workdir must be a directory a training run wrote"),
    ("no_checkpoint", r"no checkpoint in .*checkpoints: the run has not saved one yet"),
    ("format", r"flag --format=onnx: value should be one of <safetensors\|msgpack\|torchvision>"),
    ("vit", r"--format=torchvision is torchvision's ResNet state dict; .* holds a vit_small "
            r"encoder: use --format=safetensors or msgpack"),
    ("step", r"no checkpoint at step 999 in .* \(have \[2\]\)"),
])
def test_command_line_mistakes_are_one_error_line(case, said, trained_run, tmp_path):
  workdir, flags = tmp_path, []
  if case == "missing":
    workdir = tmp_path / "missing"
  elif case in ("no_checkpoint", "vit"):
    config = model_config("vit_small" if case == "vit" else "resnet18")
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    flags = ["--format=torchvision"] if case == "vit" else []
  elif case == "format":
    workdir, flags = trained_run, ["--format=onnx"]
  elif case == "step":
    workdir, flags = trained_run, ["--step=999"]
  done = run_export(f"--workdir={workdir}", *flags)
  assert done.returncode == 2, done.stderr[-2000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
  assert "Traceback" not in done.stderr
  assert re.search(said, lines[0]), lines[0]
