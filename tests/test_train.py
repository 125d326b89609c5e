"""End to end on real CIFAR-10 images with a tiny model: learning, checkpoints, resume, results."""

import json

import numpy as np
import pytest

from conftest import tiny_config
from rwl_jax import train
from rwl_jax.errors import ConfigError
from rwl_jax.evaluate.run import evaluate_checkpoint

pytestmark = pytest.mark.slow  # compiles full train steps; `-m 'not slow'` skips it


def read_losses(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


@pytest.mark.parametrize("method", ["rwl", "simclr"])
def test_trains_checkpoints_resumes_and_reports(method, cifar_dir, tmp_path):
  config = tiny_config(cifar_dir, tmp_path / "cache", method=method)
  config.num_epochs = 4
  config.optimizer.learning_rate = 0.05
  config.data.max_train_examples = 320  # 10 steps per epoch of 32
  workdir = tmp_path / "work"
  results = train.train_and_evaluate(config, str(workdir))

  losses = read_losses(workdir)
  assert len(losses) == 8  # logged every 5 steps over 40 steps
  assert np.mean(losses[-2:]) < np.mean(losses[:2]), losses
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  spread = [row["representation_std"] for row in rows if "loss" in row]
  assert len(spread) == 8 and all(0.1 < s < 1.5 for s in spread), spread  # not collapsed
  saved = json.loads((workdir / "results.json").read_text())
  for key in ("knn_top1", "linear_top1", "epochs", "method", "images_per_second"):
    assert key in saved
  assert saved["method"] == method and saved["epochs"] == 4 and saved["steps"] == 40
  assert 0.0 <= saved["knn_top1"] <= 1.0 and 0.0 <= saved["linear_top1"] <= 1.0
  assert saved["knn_top1"] == results["knn_top1"]
  checkpoints = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert checkpoints == [20, 30, 40]  # every epoch, newest 3 kept
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  # The saved final checkpoint evaluates to the run's own kNN figure.
  assert evaluate_checkpoint(str(workdir), linear=False)["knn_top1"] == results["knn_top1"]
  # A run written before a setting existed (here the online probe's) still evaluates: missing
  # settings take their defaults.
  written = json.loads((workdir / "config.json").read_text())
  for name in ("online_probe", "online_probe_learning_rate", "online_probe_every_epochs"):
    del written["eval"][name]
  (workdir / "config.json").write_text(json.dumps(written))
  assert evaluate_checkpoint(str(workdir), linear=False)["knn_top1"] == results["knn_top1"]

  # A second run on the same workdir with more epochs resumes at step 40 instead of restarting,
  # once the change is accepted; it is recorded in the run's history.
  config.num_epochs = 5
  before = {path: path.read_bytes() for path in workdir.rglob("*") if path.is_file()}
  with pytest.raises(ConfigError, match=r"settings differ from this command's: num_epochs 4 -> 5"):
    train.train_and_evaluate(config, str(workdir))
  # Refused: nothing in the workdir changed (config.json, metrics, results, checkpoints).
  assert {path: path.read_bytes() for path in workdir.rglob("*") if path.is_file()} == before
  again = train.train_and_evaluate(config, str(workdir), accept_config_change=True)
  history = [json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()]
  assert history == [{"time": history[0]["time"], "step": 40,
                      "changes": {"num_epochs": {"old": 4, "new": 5}}}]
  assert again["steps"] == 50
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
           if "loss" in json.loads(line)]
  assert steps[len(losses):] == [45, 50]
