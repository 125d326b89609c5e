"""A damaged newest checkpoint: the run warns, resumes from the previous one and goes on."""

import logging

import pytest

from conftest import tiny_config
from rwl_jax import train

pytestmark = pytest.mark.slow  # compiles full train steps; `-m 'not slow'` skips it


def test_damaged_newest_checkpoint_falls_back(cifar_dir, tmp_path, caplog):
  config = tiny_config(cifar_dir, tmp_path / "cache")
  config.data.max_train_examples = 160  # 5 steps per epoch; checkpoints at 5 and 10
  config.eval.linear_epochs = 1
  workdir = tmp_path / "work"
  train.train_and_evaluate(config, str(workdir))
  # Damage step 10's array data (its metadata survives, as after a disk failure mid-file).
  data_files = [p for p in (workdir / "checkpoints" / "10").rglob("*")
                if p.is_file() and ("/d/" in str(p) or "ocdbt.process" in str(p))]
  assert data_files
  for path in data_files:
    path.write_bytes(b"\0" * 16)

  config.num_epochs = 3
  with caplog.at_level(logging.WARNING):
    results = train.train_and_evaluate(config, str(workdir))
  assert any("checkpoints/10 is unreadable" in r.getMessage() for r in caplog.records)
  assert results["steps"] == 15  # resumed at 5, trained 10 more steps
