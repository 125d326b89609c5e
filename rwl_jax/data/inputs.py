"""What a run reads: this process's shards of the splits, the train step's inputs, the probe batch.

    data = load_data(config.data)                            # uint8 arrays, this process's rows
    inputs = train_inputs(experiment, data, first_step=step)  # epoch_inputs + abstract inputs

'host': tf.data makes the two views on the CPU and each step receives them; one pipeline for the
whole run, so its prefetching carries over epoch boundaries. 'device': this process's uint8
examples live on its devices and each step receives only the batch's indices; the same epoch
order, views made in JAX inside the step (device_pipeline).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from rwl_jax import parallel
from rwl_jax.data import device_pipeline, order, sources
from rwl_jax.errors import ConfigError

AUGMENT_ON = ("host", "device")


def validate(data_config: ml_collections.ConfigDict) -> None:
  """The data section's values that decide how the run is fed (the sources check theirs when
  they open); one ConfigError line naming the problem."""
  if data_config.augment_on not in AUGMENT_ON:
    raise ConfigError(f"data.augment_on must be 'host' (tf.data) or 'device' (JAX), got "
                      f"{data_config.augment_on!r}")
  if not (isinstance(data_config.num_shards, int) and data_config.num_shards >= 0):
    raise ConfigError(f"data.num_shards must be an integer >= 0 (0 = one per process), got "
                      f"{data_config.num_shards!r}")


@dataclasses.dataclass(frozen=True)
class ProcessData:
  """This process's examples of the training and evaluation splits, and how each is sharded.

  train is what the step trains on (its labels only for the online probe); the evaluation
  extracts features of eval_train (the kNN bank and linear-probe training split: `train` itself
  unless data.eval_train_split or data.eval_image_dir names another) and of test. test is None
  when the run has no labelled evaluation data; evaluation_off says why.
  """

  train: sources.ArraySplit
  test: sources.ArraySplit | None
  train_shards: order.DataShards
  test_shards: order.DataShards | None
  eval_train: sources.ArraySplit | None = None  # None = train
  eval_train_shards: order.DataShards | None = None
  evaluation_off: str = ""
  prefetch_batches: int = 2  # host views: batches tf.data prepares ahead of the step

  def __post_init__(self):
    if self.eval_train is None:  # the training split is the bank: held once, not twice
      object.__setattr__(self, "eval_train", self.train)
      object.__setattr__(self, "eval_train_shards", self.train_shards)

  @property
  def evaluates(self) -> bool:
    return self.test is not None

  @property
  def class_names(self) -> tuple[str, ...]:
    """The evaluation's classes (the training split's when evaluation is off)."""
    return self.eval_train.class_names if self.evaluates else self.train.class_names

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Full global batches per epoch; ConfigError when there is not even one."""
    steps = self.train_shards.steps_per_epoch(global_batch_size)
    if steps < 1:
      shards = self.train_shards.num_shards
      raise ConfigError(f"global_batch_size={global_batch_size} is larger than the "
                        f"{self.train_shards.num_examples} training images"
                        + (f" ({shards} shards)" if shards > 1 else ""))
    return steps


def load_data(data_config: ml_collections.ConfigDict, *,
              train_labels: bool = False) -> ProcessData:
  """Reads only this process's shards of the training and evaluation splits (order.DataShards) of
  the data section; which splits and folders they are: sources.open_dataset. train_labels: the
  step trains on the training split's labels (eval.online_probe), so every example needs one."""
  data = data_config
  num_shards, prefetch_batches = data.num_shards, data.prefetch_batches
  train_split = data.train_split
  opened = sources.open_dataset(data)
  if train_labels:
    _check_online_probe_labels(opened)

  def shards_of(source, name):
    shards = order.data_shards(source.num_examples, num_shards, jax.process_index(),
                               jax.process_count())
    logging.info("process %d of %d reads %s examples [%d, %d) of %d", jax.process_index(),
                 jax.process_count(), name, *shards.process_range(), shards.num_examples)
    return shards

  held = {}
  for name, source in (("train", opened.train), ("eval_train", opened.bank),
                       ("test", opened.test)):
    if source is not None:
      shards = shards_of(source, name)
      held[name] = source.read(*shards.process_range()), shards
  if train_labels and (held["train"][0].labels < 0).any():
    raise ConfigError(f"eval.online_probe trains on the labels of data.train_split "
                      f"{train_split!r}, and it has unlabelled examples (label -1); turn it "
                      "off or train on a labelled split")
  bank = held.get("eval_train", (None, None))
  if bank[0] is not None and (bank[0].labels < 0).any():
    raise ConfigError(f"the kNN bank / linear-probe split {opened.bank.split!r} has unlabelled "
                      "examples (label -1); set data.eval_train_split to a labelled split")
  if opened.test is not None and bank[0] is None and (held["train"][0].labels < 0).any():
    raise ConfigError(f"the kNN bank / linear-probe split {train_split!r} (the training "
                      "split) has unlabelled examples (label -1); set data.eval_train_split to a "
                      "labelled split (STL-10: 'train')")
  test = held.get("test", (None, None))
  return ProcessData(train=held["train"][0], train_shards=held["train"][1], test=test[0],
                     test_shards=test[1], eval_train=bank[0], eval_train_shards=bank[1],
                     evaluation_off=opened.evaluation_off,
                     prefetch_batches=prefetch_batches)


def _check_online_probe_labels(opened: sources.DatasetSources) -> None:
  """The online probe trains on the training split's labels and is scored on the test split."""
  if not opened.train.class_names:
    raise ConfigError("eval.online_probe needs labelled training images, and the images of "
                      "data.image_dir have no labels (no class folders); set "
                      "--config.eval.online_probe=False")
  if opened.test is not None and opened.train.class_names != opened.test.class_names:
    raise ConfigError(f"eval.online_probe is trained on the classes of the training data and "
                      f"scored on the evaluation data's, and they differ: "
                      f"{opened.train.class_names[:5]} vs {opened.test.class_names[:5]}")


@dataclasses.dataclass(frozen=True)
class TrainInputs:
  """epoch_inputs(epoch, start) iterates over the step's inputs (after the state) for the steps
  [start, steps_per_epoch) of that epoch; abstract: their shapes and shardings, for compiling."""

  epoch_inputs: Callable[[int, int], Iterator[tuple[Any, ...]]]
  abstract: tuple[Any, ...]


def train_inputs(experiment, data: ProcessData, *, first_step: int) -> TrainInputs:
  """The inputs of the experiment's step path (host or device views, with labels when it trains
  the online probe), from first_step (a resumed run's step) on; the loop asks for the epochs in
  order."""
  batch_size, mesh = experiment.global_batch_size, experiment.mesh
  steps_per_epoch = experiment.steps_per_epoch
  with_labels = experiment.online_probe is not None  # only the online probe reads them
  if experiment.augment_on == "host":
    from rwl_jax.data import pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)

    batches = pipeline.train_batches(  # a generator: nothing runs until the first batch
        data.train, shards=data.train_shards, global_batch_size=batch_size,
        recipe=experiment.recipe, seed=experiment.seed, first_step=first_step,
        last_step=experiment.num_steps, prefetch=data.prefetch_batches)

    names = ("view1", "view2") + (("label",) if with_labels else ())

    def host_inputs(epoch: int, start_step: int):
      for _ in range(start_step, steps_per_epoch):
        batch = next(batches)
        if with_labels:
          batch["label"] = batch["label"].astype(np.int32)
        yield (parallel.to_global({name: batch[name] for name in names}, mesh),)

    return TrainInputs(host_inputs, experiment.host_inputs_spec())

  dataset = device_pipeline.put_dataset(data.train.images, mesh,
                                        data.train_shards.max_process_examples,
                                        data.train.labels if with_labels else None)
  sharded = parallel.data_sharded(mesh)

  def device_inputs(epoch: int, start_step: int):
    indices = data.train_shards.local_epoch_order(batch_size, experiment.seed, epoch)
    for local_indices in indices[start_step:]:
      yield dataset, parallel.to_global(local_indices.astype(np.int32), mesh)

  return TrainInputs(device_inputs, (
      dataset, jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=sharded)))


def probe_images(data: ProcessData, probe_batch_size: int, mesh: jax.sharding.Mesh) -> jax.Array:
  """The fixed probe batch: uint8 train images, data-sharded, each process giving its first
  rows (the same images every log step and after a resume). The size is rounded down to a
  multiple of the device count and capped by what the processes hold."""
  devices = mesh.devices.size
  per_process_cap = min(len(data.train), data.train_shards.max_process_examples)
  size = min(probe_batch_size, per_process_cap * jax.process_count())
  size -= size % devices
  if size < 2 * devices:
    raise ConfigError(f"eval.probe_batch_size={probe_batch_size} leaves fewer than 2 images per "
                      f"device on {devices} devices; use a multiple of {devices} or 0 (off)")
  local = size // jax.process_count()
  return parallel.to_global(np.ascontiguousarray(data.train.images[:local]), mesh)
