"""Trained encoders out of the library, and back in.

  python -m rwl_jax.export --workdir=DIR [--step=N] --format=safetensors|msgpack|torchvision \\
      [--out=PATH]
  encoder = rwl_jax.load_encoder(PATH)        # safetensors, msgpack or torchvision files
  features = encoder(encoder.preprocess(uint8_images))     # [B, num_features], eval mode

Only the encoder is written (no projector, predictor, EMA target or optimiser state): the
online network's parameters and BatchNorm running statistics at checkpoint N (default: the
newest readable), float32 whatever the compute dtype. Every file carries the model description:
format, version, encoder, width, stem, patch_size, image_size, dtype, num_features, depth (ViTs),
mean and std (the run's `augment` normalisation), method and step.

Formats (default output DIR/encoder_step_N.safetensors, .msgpack or _torchvision.safetensors):
  safetensors  tensors named by their path in the Flax module ("stem_conv.kernel",
               "blocks.3.shortcut.layers.1.mean", "blocks.0.attn.qkv.kernel"), kernels in Flax's
               layout (conv HWIO, dense [in, out]); the description in the header's
               __metadata__, one key per field (strings as they are, other values as JSON).
  msgpack      flax.serialization.msgpack_serialize({"description": JSON text,
               "tensors": {name: array}}) with the same names and description.
  torchvision  (ResNets only) a safetensors file whose names and layouts are torchvision's ResNet
               state dict without `fc`: conv1.weight [O, I, kh, kw], bn1.weight / bias /
               running_mean / running_var / num_batches_tracked (int64, = the step),
               layer{1-4}.{i}.conv1.weight, ..., layer{k}.0.downsample.0.weight and
               downsample.1.*, so `torchvision.models.resnet50()` (or resnet18, with conv1 3x3
               and maxpool = Identity for the CIFAR stem) loads it with strict=False for its fc
               and strict=True without it.

Features are computed on normalised NHWC float images, (x / 255 - mean) / std per channel with
the loaded encoder's .mean and .std, as the run's own evaluation does; .preprocess does that for
uint8 images. Every path may be a URL (gs://...), read and written through etils.epath.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from rwl_jax import models, paths
from rwl_jax.errors import ConfigError

FORMATS = ("safetensors", "msgpack", "torchvision")
FORMAT_NAME = "rwl_jax.encoder"  # the description's "format" of safetensors and msgpack files
TORCHVISION_FORMAT = "torchvision.resnet"
VERSION = 1
# Description fields stored as text in the safetensors metadata; the others are JSON.
_TEXT_FIELDS = ("format", "encoder", "stem", "dtype", "method")
_SUFFIX = {"safetensors": ".safetensors", "msgpack": ".msgpack",
           "torchvision": "_torchvision.safetensors"}
# Flax BatchNorm's variables -> torchvision's.
_BATCH_NORM_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean",
                     "var": "running_var"}


def _safetensors_numpy():
  try:
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError("the safetensors formats need the safetensors package: pip install "
                      "safetensors") from None
  return safetensors.numpy


# ---------------------------------------------------------------------------------------------
# The description and the tensors of an encoder.


def describe(config, *, step: int = 0, depth: int | None = None) -> dict[str, Any]:
  """The description an exported encoder carries, from a run's config (its model, data.image_size
  and augment sections). depth: the ViT's number of blocks (default: its architecture's)."""
  from rwl_jax.data.recipe import AugmentRecipe  # pylint: disable=g-import-not-at-top

  model = config.model
  recipe = AugmentRecipe.from_config(config.augment)
  description = {
      "format": FORMAT_NAME, "version": VERSION, "encoder": model.encoder,
      "width": int(model.width), "stem": model.stem, "patch_size": int(model.patch_size),
      "image_size": int(config.data.image_size), "dtype": model.dtype,
      "mean": [float(v) for v in recipe.mean], "std": [float(v) for v in recipe.std],
      "method": config.method, "step": int(step),
  }
  if models.is_vit(model.encoder):
    description["depth"] = int(depth if depth is not None else models.vit.ARCHITECTURES[
        model.encoder][1])
  return description


def _flat_names(pure: Mapping) -> list[tuple[str, Any]]:
  """(dotted path, leaf) of a nested pure dict, in tree order."""
  leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
  return [(".".join(str(getattr(key, "key", key)) for key in path), leaf)
          for path, leaf in leaves]


def encoder_tensors(encoder: nnx.Module) -> dict[str, np.ndarray]:
  """Every variable of the encoder (parameters and BatchNorm statistics) by dotted Flax path."""
  return {name: np.asarray(value) for name, value in
          _flat_names(nnx.to_pure_dict(nnx.state(encoder)))}


def torchvision_names(encoder: nnx.Module) -> dict[str, str]:
  """{Flax name: torchvision name} of a ResNet encoder's variables.

  stem_conv -> conv1, stem_bn -> bn1; blocks.j -> layer{s+1}.{i} where block j is the i-th of
  stage s (encoder.stage_sizes); shortcut.layers.0/1 -> downsample.0/1; kernel -> weight and
  BatchNorm scale/bias/mean/var -> weight/bias/running_mean/running_var.
  """
  if not isinstance(encoder, models.ResNet):
    raise ConfigError(f"the torchvision format holds ResNets only, not a "
                      f"{type(encoder).__name__}; export it as safetensors or msgpack")
  where = [(stage, index) for stage, size in enumerate(encoder.stage_sizes)
           for index in range(size)]
  names = {}
  for name, _ in _flat_names(nnx.to_pure_dict(nnx.state(encoder))):
    parts = name.split(".")
    if parts[0] in ("stem_conv", "stem_bn"):
      module, rest = ["conv1" if parts[0] == "stem_conv" else "bn1"], parts[1:]
    else:  # blocks.J.(convK|bnK|shortcut.layers.L).variable
      stage, index = where[int(parts[1])]
      inner = parts[2:-1]
      if inner[0] == "shortcut":
        inner = ["downsample", inner[2]]
      module, rest = [f"layer{stage + 1}", str(index), *inner], parts[-1:]
    variable = "weight" if rest[0] == "kernel" else _BATCH_NORM_NAMES[rest[0]]
    names[name] = ".".join(module + [variable])
  return names


def torchvision_tensors(encoder: nnx.Module, *, step: int = 0) -> dict[str, np.ndarray]:
  """The ResNet's torchvision state dict (no fc): conv kernels HWIO -> OIHW, BatchNorm variables
  renamed, and each BatchNorm's num_batches_tracked (int64 scalar) set to `step`."""
  names = torchvision_names(encoder)
  tensors = {}
  for name, value in encoder_tensors(encoder).items():
    target = names[name]
    tensors[target] = np.ascontiguousarray(value.transpose(3, 2, 0, 1) if value.ndim == 4
                                           else value)
    if target.endswith(".running_mean"):
      tensors[target.replace(".running_mean", ".num_batches_tracked")] = np.array(step, np.int64)
  return tensors


# ---------------------------------------------------------------------------------------------
# Files.


def _metadata(description: Mapping[str, Any]) -> dict[str, str]:
  return {key: value if key in _TEXT_FIELDS else json.dumps(value)
          for key, value in description.items()}


def _from_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
  return {key: value if key in _TEXT_FIELDS else json.loads(value)
          for key, value in metadata.items()}


def encoder_bytes(encoder: nnx.Module, description: Mapping[str, Any], fmt: str) -> bytes:
  """The file of `fmt` (safetensors, msgpack or torchvision) holding the encoder."""
  if fmt not in FORMATS:
    raise ConfigError(f"unknown export format {fmt!r}; choose one of {list(FORMATS)}")
  description = dict(description)
  if fmt == "torchvision":
    tensors = torchvision_tensors(encoder, step=int(description.get("step", 0)))
    description["format"] = TORCHVISION_FORMAT
  else:
    tensors = encoder_tensors(encoder)
    description["format"] = FORMAT_NAME
  description["num_features"] = int(encoder.num_features)
  if fmt == "msgpack":
    from flax import serialization  # pylint: disable=g-import-not-at-top

    return serialization.msgpack_serialize({"description": json.dumps(description),
                                            "tensors": tensors})
  return _safetensors_numpy().save(tensors, metadata=_metadata(description))


def save_encoder(encoder: nnx.Module, description: Mapping[str, Any], path: epath.PathLike,
                 fmt: str = "safetensors") -> epath.Path:
  """Writes the encoder to `path` (local or URL) in `fmt`; returns the path."""
  data = encoder_bytes(encoder, description, fmt)
  path = paths.output_file(path, "--out")
  path.write_bytes(data)
  return path


def _read_file(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(description, tensors) of a safetensors or msgpack encoder file."""
  # safetensors: an 8-byte little-endian header size, then the JSON header.
  if len(data) >= 9 and data[8:9] == b"{":
    size = struct.unpack("<Q", data[:8])[0]
    try:
      header = json.loads(data[8:8 + size])
    except ValueError:
      raise ConfigError(f"{where} is not a readable safetensors file (its header is not JSON)"
                        ) from None
    metadata = header.get("__metadata__") or {}
    if "encoder" not in metadata:
      raise ConfigError(f"{where} has no rwl_jax model description in its metadata; load files "
                        "written by `python -m rwl_jax.export`")
    return _from_metadata(metadata), dict(_safetensors_numpy().load(data))
  from flax import serialization  # pylint: disable=g-import-not-at-top

  try:
    content = serialization.msgpack_restore(data)
    description = json.loads(content["description"])
    tensors = {name: np.asarray(value) for name, value in content["tensors"].items()}
  except Exception:  # pylint: disable=broad-except  # msgpack raises many types on other data
    raise ConfigError(f"{where} is neither a safetensors nor a msgpack encoder file written by "
                      "`python -m rwl_jax.export`") from None
  return description, tensors


# ---------------------------------------------------------------------------------------------
# Loading.


class LoadedEncoder(nnx.Module):
  """An exported encoder in evaluation mode (BatchNorm on its running statistics).

  features = encoder(images): images are NHWC float, NORMALISED as in training,
  (x / 255 - mean) / std per channel with .mean and .std (the run's augment.mean/std);
  encoder.preprocess(uint8 or [0, 255] images) does it. Returns [B, num_features] in the compute
  dtype it was trained with (.description["dtype"]). .description holds the whole description.
  """

  def __init__(self, encoder: nnx.Module, description: Mapping[str, Any]):
    self.encoder = encoder
    self.description = dict(description)
    self.mean = tuple(float(v) for v in description["mean"])
    self.std = tuple(float(v) for v in description["std"])
    self.num_features = encoder.num_features
    self.eval()

  def preprocess(self, images: jax.Array) -> jax.Array:
    """uint8 (or [0, 255] float) NHWC images -> (x / 255 - mean) / std, float32."""
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.encoder(images)


class _ModelFields:
  """The model section a description stands for (what models.build_encoder reads)."""

  def __init__(self, description: Mapping[str, Any]):
    self.encoder = description["encoder"]
    self.width = description["width"]
    self.stem = description.get("stem", "cifar")
    self.patch_size = description.get("patch_size", 4)
    self.dtype = description.get("dtype", "float32")
    # Evaluation-mode BatchNorm is the same function whichever implementation trained (with
    # the same variables), so a loaded encoder always uses flax's.
    self.batchnorm = "flax"


def _abstract_encoder(description: Mapping[str, Any], where: str) -> nnx.Module:
  fields = _ModelFields(description)
  try:
    models.validate(fields, image_size=int(description["image_size"]))
  except ConfigError as error:
    raise ConfigError(f"{where}: its description does not name a model here: {error}") from None
  return nnx.eval_shape(lambda: models.build_encoder(
      fields, image_size=int(description["image_size"]), rngs=nnx.Rngs(0),
      depth=description.get("depth")))


def load_encoder(path: epath.PathLike) -> LoadedEncoder:
  """The encoder in a file `python -m rwl_jax.export` wrote (any of its formats), in eval mode.

  The model is rebuilt from the file's description and every variable is filled from the file;
  a missing, extra or differently shaped tensor is a ConfigError naming it.
  """
  path = paths.as_path(path, "encoder file")
  where = str(path)
  if not path.is_file():
    raise ConfigError(f"{where} not found: give a file written by `python -m rwl_jax.export`")
  description, tensors = _read_file(path.read_bytes(), where)
  encoder = _abstract_encoder(description, where)
  state = nnx.state(encoder)
  names = [name for name, _ in _flat_names(nnx.to_pure_dict(state))]
  if description.get("format") == TORCHVISION_FORMAT:
    to_torch = torchvision_names(encoder)
    tensors = {name: tensors[to_torch[name]] for name in names if to_torch[name] in tensors}
    # OIHW -> HWIO; num_batches_tracked has no Flax counterpart.
    tensors = {name: value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
               for name, value in tensors.items()}
  expected = dict(_flat_names(nnx.to_pure_dict(state)))
  missing = [name for name in names if name not in tensors]
  extra = sorted(set(tensors) - set(names))
  if missing or extra:
    raise ConfigError(f"{where} does not hold a {description['encoder']} encoder: missing "
                      f"{missing[:3]}, unexpected {extra[:3]}")
  for name in names:
    if tuple(tensors[name].shape) != tuple(expected[name].shape):
      raise ConfigError(f"{where}: {name} has shape {tuple(tensors[name].shape)}, the "
                        f"{description['encoder']} encoder needs {tuple(expected[name].shape)}")
  leaves = [jnp.asarray(tensors[name], expected[name].dtype) for name in names]
  pure = jax.tree_util.tree_structure(nnx.to_pure_dict(state)).unflatten(leaves)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(encoder, state)
  return LoadedEncoder(encoder, description)


# ---------------------------------------------------------------------------------------------
# A run's checkpoint -> a file.


def export_run(workdir: epath.PathLike, step: int | None = None, fmt: str = "safetensors",
               out: epath.PathLike | None = None) -> epath.Path:
  """Writes the encoder of checkpoint `step` of the run in `workdir` (default: the newest
  readable) to `out` (default: WORKDIR/encoder_step_N.safetensors, .msgpack or
  _torchvision.safetensors); returns the path written. Everything that can be checked before
  the run is restored (format, config, checkpoints, output folder) is checked first."""
  from rwl_jax.run import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  from rwl_jax import parallel  # pylint: disable=g-import-not-at-top
  from rwl_jax.run import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from rwl_jax.run.checkpoint import (  # pylint: disable=g-import-not-at-top
      Checkpointer, none_readable, set_aside_checkpoints)
  from rwl_jax.evaluate.run import restore_checkpoint  # pylint: disable=g-import-not-at-top

  if fmt not in FORMATS:
    raise ConfigError(f"unknown --format {fmt!r}; choose one of {list(FORMATS)}")
  workdir = paths.workdir(workdir)
  config = workdir_lib.read_config(workdir)
  if fmt == "torchvision" and models.is_vit(config.model.encoder):
    raise ConfigError(f"--format=torchvision is torchvision's ResNet state dict; {workdir} holds a "
                      f"{config.model.encoder} encoder: use --format=safetensors or msgpack")
  checkpoints = workdir / "checkpoints"
  steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) if (
      checkpoints.is_dir()) else []
  if not steps and set_aside_checkpoints(checkpoints):
    raise none_readable(checkpoints, set_aside_checkpoints(checkpoints))
  if not steps:
    raise ConfigError(f"no checkpoint in {checkpoints}: the run has not saved one yet")
  if step is not None and step not in steps:
    raise ConfigError(f"no checkpoint at step {step} in {checkpoints} (have {steps})")
  if out:
    paths.output_file(out, "--out")  # a bad --out fails before the run is restored
  # No data are read: the state's shapes depend on the config alone, except the online probe's
  # class count, which the checkpoint's metadata holds. The schedule (steps per epoch) is not
  # part of the state.
  num_classes = None
  if config.eval.online_probe:
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    try:  # the newest checkpoint whose metadata reads (a damaged one is set aside below)
      saved = next((shapes for shapes in map(checkpointer.saved_shapes, reversed(
          steps if step is None else [step])) if shapes), {})
    finally:
      checkpointer.close()
    num_classes = saved.get("probe_params/b", (None,))[0]
  experiment = experiment_lib.build(config, parallel.make_mesh(), steps_per_epoch=1,
                                    num_classes=num_classes)
  step, state = restore_checkpoint(workdir, config, experiment, step)
  network = nnx.merge(experiment.defs.eval, state.params, state.batch_stats)
  description = describe(config, step=step)
  if out is None:
    out = workdir / f"encoder_step_{step}{_SUFFIX[fmt]}"
  return save_encoder(network.encoder, description, out, fmt)


def define_flags() -> dict[str, Any]:
  # Defined only when run as a program: importing the module (load_encoder) defines no flags.
  from absl import flags  # pylint: disable=g-import-not-at-top

  return {
      "workdir": flags.DEFINE_string("workdir", None, "A training run's directory.",
                                     required=True),
      "step": flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest)."),
      "format": flags.DEFINE_enum("format", "safetensors", list(FORMATS), "File format."),
      "out": flags.DEFINE_string("out", None, "Output file (default: in the workdir)."),
  }


def main(values: dict[str, Any]) -> None:
  path = export_run(values["workdir"].value, values["step"].value, values["format"].value,
                    values["out"].value)
  print(path)
