"""A damaged newest checkpoint: the run warns, resumes from the previous one and goes on."""

import logging

import pytest

from conftest import tiny_config
from rwl_jax import train

slow = pytest.mark.slow  # these compile full train steps


@slow
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
    results = train.train_and_evaluate(config, str(workdir), accept_config_change=True)
  assert any("checkpoints/10 is unreadable" in r.getMessage() for r in caplog.records)
  assert results["steps"] == 15  # resumed at 5, trained 10 more steps


@slow
def test_lost_metadata_is_damage_not_a_config_mismatch(cifar_dir, tmp_path, caplog):
  """Before: a checkpoint whose metadata file was deleted was reported as 'does not match this
  config; use a new --workdir'. It is damage: set aside, previous one used, by evaluate too."""
  from rwl_jax.evaluate.run import evaluate_checkpoint  # pylint: disable=g-import-not-at-top

  config = tiny_config(cifar_dir, tmp_path / "cache")
  config.data.max_train_examples = 160  # checkpoints at 5 and 10
  config.eval.linear_epochs = 1
  workdir = tmp_path / "work"
  results = train.train_and_evaluate(config, str(workdir))
  (workdir / "checkpoints" / "10" / "default" / "_METADATA").unlink()

  with caplog.at_level(logging.WARNING):
    evaluated = evaluate_checkpoint(str(workdir), linear=False)
  assert any("checkpoints/10 is damaged: its metadata file is missing" in r.getMessage()
             for r in caplog.records)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["10.unreadable", "5"]
  assert 0 <= evaluated["knn_top1"] <= 1 and (workdir / "eval_step_5.json").is_file()

  # The same command resumes from step 5 and trains steps 6-10 again.
  again = train.train_and_evaluate(config, str(workdir))
  assert again["steps"] == 10 and (workdir / "checkpoints" / "10").is_dir()
  assert results["knn_top1"] == pytest.approx(again["knn_top1"], abs=1e-6)


def test_no_checkpoint_left_that_reads_back_is_one_line_not_a_fresh_start(tmp_path):
  """Every checkpoint damaged: starting over would trim the run's metrics.jsonl to nothing and
  overwrite its results, so the run stops with one line naming what was set aside."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from rwl_jax.run import checkpoint  # pylint: disable=g-import-not-at-top

  state = {"w": jnp.arange(4, dtype=jnp.float32)}
  checkpointer = checkpoint.Checkpointer(tmp_path, keep=5)
  for step in (1, 2):
    checkpointer.save(step, state)
  checkpointer.wait()
  folder = tmp_path / "checkpoints"
  (folder / "2.unreadable").mkdir()  # set aside by an earlier fallback: a new name is taken
  for step in (1, 2):
    (folder / str(step) / "default" / "_METADATA").unlink()
  said = (rf"^{folder}: no checkpoint reads back \(2.unreadable.2, 2.unreadable, 1.unreadable set "
          rf"aside as damaged\); train again in a new --workdir, or move them out of {folder}")
  with pytest.raises(checkpoint.CheckpointDamaged, match=said):
    checkpointer.restore_newest_readable(state)
  assert sorted(p.name for p in folder.iterdir()) == ["1.unreadable", "2.unreadable",
                                                      "2.unreadable.2"]
  with pytest.raises(checkpoint.CheckpointDamaged, match=said):  # and again on the next attempt
    checkpointer.restore_newest_readable(state)
  checkpointer.close()
