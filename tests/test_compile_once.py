"""A run compiles each program once, before its loop, and a rerun of the same command in a fresh
process loads every program from the persistent compilation cache instead of compiling it."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, tiny_config
from rwl_jax import compilation, train
from rwl_jax.run import loop
from rwl_jax.configs import common
from rwl_jax.errors import ConfigError

EVALUATION_PROGRAMS = ("jit(features)", "jit(_knn_chunks)", "jit(_fit_and_count)",
                       "jit(_online_correct)", "jit(probe)")


@pytest.mark.slow
def test_every_evaluation_program_compiles_once_before_the_loop(cifar_dir, tmp_path, monkeypatch):
  config = tiny_config(cifar_dir, tmp_path / "cache")
  config.num_epochs = 3
  config.data.max_train_examples = 96  # 3 steps of 32 per epoch
  config.log_every_steps = 2
  config.eval.knn_every_epochs = 1  # kNN after every epoch, and at step 0
  config.eval.linear_every_epochs = 2
  config.eval.online_probe, config.eval.online_probe_every_epochs = True, 1
  # Shapes of this test alone, so no other test in this process compiled these programs.
  config.eval.batch_size, config.eval.knn_k_sweep, config.eval.linear_epochs = 96, (7,), 3
  started = []
  real_run = loop.run
  monkeypatch.setattr(loop, "run", lambda *a, **k: started.append(time.perf_counter())
                      or real_run(*a, **k))
  with compilation.CompileLog() as log:
    results = train.train_and_evaluate(config, str(tmp_path / "work"))
  names = [c.name for c in log.compilations]  # compiled or loaded from the persistent cache
  assert {name: names.count(name) for name in EVALUATION_PROGRAMS} == dict.fromkeys(
      EVALUATION_PROGRAMS, 1)
  # Three periodic evaluations, the final one, thirteen log steps: nothing compiled in or after
  # the loop, not even an eager op.
  assert [c.name for c in log.compilations if c.at > started[0]] == []
  metrics = (tmp_path / "work" / "metrics.jsonl").read_text()
  rows = [json.loads(line) for line in metrics.splitlines()]
  assert [row["step"] for row in rows if "knn_top1" in row] == [0, 3, 6, 9]
  assert [row["step"] for row in rows if "linear_top1" in row] == [6, 9]
  assert results["programs_compiled"] + results["programs_loaded"] == len(log.compilations)


def run_command(workdir, cifar_dir, cache):
  """The train command in a fresh process; its results.json."""
  command = [sys.executable, "-m", "rwl_jax.main", "--config=configs/cifar10_rwl.py",
             f"--workdir={workdir}", f"--config.data.image_dir={cifar_dir}",
             f"--config.data.cache_dir={cache / 'decoded'}",
             f"--config.compilation_cache_dir={cache / 'compiled'}", "--config.num_epochs=1",
             "--config.global_batch_size=32", "--config.data.max_train_examples=64",
             "--config.model.encoder=resnet10", "--config.model.width=4",
             "--config.model.projector_dims=(16,8)", "--config.eval.batch_size=128",
             "--config.eval.knn_every_epochs=1", "--config.eval.linear_epochs=1",
             "--config.eval.probe_batch_size=0", "--config.log_every_steps=1"]
  # Without the test suite's cache settings: the run's own defaults decide.
  env = {name: value for name, value in os.environ.items()
         if not name.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env=dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)))
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads((workdir / "results.json").read_text()), done.stderr


@pytest.mark.slow
def test_a_second_identical_run_compiles_nothing(cifar_dir, tmp_path):
  first, _ = run_command(tmp_path / "first", cifar_dir, tmp_path / "cache")
  assert first["programs_loaded"] == 0 and first["programs_compiled"] >= 8  # init, step, eval
  # The same command (another workdir, or it would resume a finished run) in a new process.
  second, log = run_command(tmp_path / "second", cifar_dir, tmp_path / "cache")
  assert (second["programs_compiled"], second["programs_loaded"]) == (
      0, first["programs_compiled"]), log[-3000:]
  assert second["knn_top1"] == first["knn_top1"]
  assert "programs: 0 compiled" in log


def test_cache_directory_precedence(monkeypatch, tmp_path):
  default = common.DEFAULT_COMPILATION_CACHE_DIR
  assert common.get_config().compilation_cache_dir == default
  monkeypatch.delenv(compilation.ENVIRONMENT_VARIABLE, raising=False)
  assert compilation.cache_directory(default) == os.path.expanduser(default)
  monkeypatch.setenv(compilation.ENVIRONMENT_VARIABLE, str(tmp_path / "env"))
  assert compilation.cache_directory(default) == str(tmp_path / "env")  # the variable wins
  assert compilation.cache_directory(str(tmp_path / "mine")) == str(tmp_path / "mine")  # over it
  assert compilation.cache_directory("gs://bucket/jax") == "gs://bucket/jax"
  for off in ("", "off", "OFF"):
    assert compilation.cache_directory(off) is None
  with pytest.raises(ConfigError, match=r"compilation_cache_dir 'ftp://x/y': unsupported URL"):
    compilation.cache_directory("ftp://x/y")


def test_a_cache_folder_that_cannot_be_made_is_one_line(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(ConfigError, match=r"compilation_cache_dir .*file/jax.* cannot be made"):
    compilation.use_cache(str(tmp_path / "file" / "jax"))


def test_bad_cache_settings_fail_before_the_workdir_changes(tmp_path):
  config = common.get_config("smoke")
  config.compilation_cache_dir = "ftp://x/y"
  with pytest.raises(ConfigError) as raised:  # cli.run makes it one `error:` line, status 2
    train.train_and_evaluate(config, str(tmp_path / "work"))
  assert str(raised.value) == ("compilation_cache_dir 'ftp://x/y': unsupported URL scheme "
                               "'ftp://'; use a local path or gs://, s3://, az://, hf://")
  assert not (tmp_path / "work").exists()
