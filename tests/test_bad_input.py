"""Bad input ends in one clear error line naming the problem, never a bare traceback."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, tiny_config
from rwl_jax import train
from rwl_jax.errors import ConfigError


@pytest.fixture
def config(cifar_dir, tmp_path):
  return tiny_config(cifar_dir, tmp_path / "cache")


def run(config, tmp_path):
  return train.train_and_evaluate(config, str(tmp_path / "work"))


@pytest.mark.parametrize("override, message", [
    (dict(method="mocov9"), "unknown method 'mocov9'"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(temperature=-0.4), "temperature must be > 0"),
    (dict(num_epochs=0), "num_epochs must be a positive integer"),
    (dict(num_epochs=-3), "num_epochs must be a positive integer"),
    (dict(global_batch_size=1), "global_batch_size must be >= 2"),
    (dict(global_batch_size=4096), "larger than the 640 training images"),
    (dict(optimizer=dict(name="adamw2")), "unknown optimizer.name 'adamw2'"),
    (dict(data=dict(augment_on="gpu")), "data.augment_on must be 'host'"),
    (dict(augment=dict(crop_scale=(0.2, 1.5))), "augment.crop_scale must satisfy"),
    (dict(augment=dict(jitter_prob=1.2)), r"augment.jitter_prob must be a probability"),
    (dict(data=dict(num_shards=-1)), r"data.num_shards must be an integer >= 0"),
    (dict(data=dict(num_shards=3)), r"global_batch_size=\d+ is not divisible by data.num_shards=3"),
])
def test_config_values(config, tmp_path, override, message):
  for key, value in override.items():
    if isinstance(value, dict):
      config[key].update(value)
    else:
      config[key] = value
  with pytest.raises(ConfigError, match=message):
    run(config, tmp_path)


def test_missing_image_dir(config, tmp_path):
  config.data.image_dir = str(tmp_path / "nowhere")
  with pytest.raises(ConfigError, match="does not exist"):
    run(config, tmp_path)


def test_empty_image_dir(config, tmp_path):
  (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
  config.data.image_dir = str(tmp_path / "empty")
  with pytest.raises(ConfigError, match="no images"):
    run(config, tmp_path)
  (tmp_path / "nosplit").mkdir()
  config.data.image_dir = str(tmp_path / "nosplit")
  with pytest.raises(ConfigError, match="has no 'train' folder"):
    run(config, tmp_path)


def test_wrong_image_size_and_corrupt_image(config, tmp_path):
  for split in ("train", "test"):
    (tmp_path / "big" / split / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big" / split / "cat" / "a.png")
  config.data.image_dir = str(tmp_path / "big")
  # Another size is resized on read (image_folder.RESIZE_POLICY): the one image reaches the batch
  # check.
  with pytest.raises(ConfigError, match=r"larger than the 1 training images"):
    run(config, tmp_path)
  (tmp_path / "bad" / "train" / "cat").mkdir(parents=True)
  (tmp_path / "bad" / "train" / "cat" / "x.png").write_bytes(b"not a png")
  (tmp_path / "bad" / "test" / "cat").mkdir(parents=True)
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "bad" / "test" / "cat" / "a.png")
  config.data.image_dir = str(tmp_path / "bad")
  with pytest.raises(ConfigError, match="cannot decode image"):
    run(config, tmp_path)


def test_command_line_prints_one_error_line(cifar_dir, tmp_path):
  """Through `python -m rwl_jax.main` on 8 devices: a batch that does not divide over them."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  done = subprocess.run(
      [sys.executable, "-m", "rwl_jax.main", "--config=configs/cifar10_rwl.py",
       f"--workdir={tmp_path / 'work'}", f"--config.data.image_dir={cifar_dir}",
       f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.global_batch_size=12"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 2
  assert "Traceback" not in done.stderr
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert errors == ["error: global_batch_size=12 is not divisible by the 8 devices; use a "
                    "multiple of 8"]


def test_unknown_tfds_dataset(config, tmp_path):
  config.data.image_dir = ""
  config.data.tfds_name = "no_such_dataset_rwl"
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  with pytest.raises(ConfigError, match="could not load TFDS dataset 'no_such_dataset_rwl'"):
    run(config, tmp_path)


@pytest.mark.slow
def test_checkpoint_of_another_model(config, tmp_path):
  config.num_epochs = 1
  config.data.max_train_examples = 64
  config.eval.linear_epochs = 1
  run(config, tmp_path)
  config.model.width = 16  # same workdir, different shapes
  with pytest.raises(ConfigError, match=r"holds a run whose settings differ from this command's: "
                                        r"model.width 8 -> 16; rerun with the run's settings"):
    run(config, tmp_path)
  # Accepted or not, the checkpoint cannot hold the new shapes: that is the checkpoint's own error.
  with pytest.raises(ConfigError, match="does not match this config"):
    train.train_and_evaluate(config, str(tmp_path / "work"), accept_config_change=True)


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    config, tmp_path, monkeypatch):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rwl_jax.errors import RunError  # pylint: disable=g-import-not-at-top

  from rwl_jax.run import experiment  # pylint: disable=g-import-not-at-top

  real_make_train_step = experiment.make_train_step

  def diverging(*args, **kwargs):
    step = real_make_train_step(*args, **kwargs)

    def poisoned(state, batch):  # from the 7th step on, the loss is NaN
      new_state, metrics = step(state, batch)
      return new_state, {**metrics, "loss": jnp.where(state.step >= 6, jnp.nan, metrics["loss"])}

    return poisoned

  monkeypatch.setattr(experiment, "make_train_step", diverging)
  config.num_epochs = 3
  config.data.max_train_examples = 160  # 5 steps per epoch
  with pytest.raises(RunError, match=r"loss became nan at step 7; stopped without saving it"):
    run(config, tmp_path)
  saved = sorted(int(p.name) for p in (tmp_path / "work" / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [5]


def test_evaluate_a_directory_that_is_not_a_run(tmp_path):
  from rwl_jax.evaluate.run import evaluate_checkpoint  # pylint: disable=g-import-not-at-top

  with pytest.raises(ConfigError, match="config.json not found: --workdir must be a directory"):
    evaluate_checkpoint(str(tmp_path))


def test_memory_tool_bad_arguments(tmp_path):
  for flags, message in ((["--batches=1k"], "error: --batches must be integers, got 1k"),
                         (["--config.method=byol"], "error: memory compares the row-sharded")):
    done = subprocess.run(
        [sys.executable, "-m", "rwl_jax.memory", "--config=configs/cifar10_rwl.py", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_non_finite_loss_found_while_stopping_still_closes_everything(
    config, tmp_path, monkeypatch):
  """Cleanup has one home: the checkpointer (its pending writes) and the metric writer are closed
  whatever ends the run, here a non-finite loss found while a stop signal is handled."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rwl_jax.run import loop  # pylint: disable=g-import-not-at-top
  from rwl_jax.run.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  from rwl_jax.errors import RunError  # pylint: disable=g-import-not-at-top
  from rwl_jax.run.metrics import MetricWriter  # pylint: disable=g-import-not-at-top

  closed = []
  for cls in (Checkpointer, MetricWriter):
    real_close = cls.close
    monkeypatch.setattr(cls, "close", lambda self, real_close=real_close, name=cls.__name__: (
        closed.append(name), real_close(self))[1])

  def stopped_after_a_nan(context, *args):
    context.pending.append({"loss": jnp.float32(jnp.nan)})
    context.step += 1
    raise loop.StopRequested("stopped by SIGTERM")

  monkeypatch.setattr(loop, "run", stopped_after_a_nan)
  config.data.max_train_examples = 64
  with pytest.raises(RunError, match="loss became nan at step 1"):
    run(config, tmp_path)
  assert sorted(closed) == ["Checkpointer", "MetricWriter"]
  assert not list((tmp_path / "work" / "checkpoints").glob("[0-9]*"))  # nothing saved
