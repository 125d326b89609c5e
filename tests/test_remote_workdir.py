"""A gs:// workdir stays a URL from the flag to Orbax: train, interrupt, resume, evaluate, report.

The bucket is tests/local_bucket.py's offline stand-in (gs://BUCKET/KEY kept in a local folder,
reached only through the gs:// code paths of epath, TensorStore and Orbax). A path that lost its
scheme would be written to the working directory as `gs:/...` instead, so the tests run in an
empty folder and check it stays empty.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, interrupt_after_logging
from rwl_jax import paths
from rwl_jax.errors import ConfigError

LAUNCHER = REPO / "tests" / "local_bucket.py"
TINY = ["--config.global_batch_size=32", "--config.model.width=4",
        "--config.model.projector_dims=(16,8)", "--config.eval.linear_epochs=1",
        "--config.data.max_eval_examples=0"]


def _command(bucket, module, *flags):
  return [sys.executable, str(LAUNCHER), str(bucket), "-m", module, *flags]


def _run(command, cwd, timeout=600):
  return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.slow
def test_gs_workdir_train_interrupt_resume_evaluate_report(cifar_dir, tmp_path):
  bucket, cwd = tmp_path / "bucket", tmp_path / "cwd"
  bucket.mkdir()
  cwd.mkdir()
  run_dir = bucket / "lab" / "runs" / "rwl"  # where gs://lab/runs/rwl lives
  train = _command(bucket, "rwl_jax.main", f"--config={REPO}/configs/cifar10_rwl.py",
                   "--workdir=gs://lab/runs/rwl", f"--config.data.image_dir={cifar_dir}",
                   f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.num_epochs=50",
                   "--config.log_every_steps=2", "--config.checkpoint_every_epochs=100", *TINY)

  returncode, stderr = interrupt_after_logging(train, cwd, run_dir / "metrics.jsonl", signal.SIGINT)
  assert returncode == 2, stderr[-3000:]
  match = re.search(r"error: interrupted at step (\d+); checkpoint saved in (\S+), rerun", stderr)
  assert match, stderr[-3000:]
  step = int(match.group(1))
  assert match.group(2) == "gs://lab/runs/rwl/checkpoints"  # the URL, as given
  assert (run_dir / "checkpoints" / str(step) / "_CHECKPOINT_METADATA").is_file()
  assert (run_dir / "config.json").is_file()
  assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

  # The same command for one epoch in total resumes from the bucket's checkpoint and finishes.
  epochs = step // (640 // 32) + 1
  train[train.index("--config.num_epochs=50")] = f"--config.num_epochs={epochs}"
  done = _run(train + ["--accept_config_change"], cwd)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"resumed from gs://lab/runs/rwl/checkpoints at step {step}" in done.stderr
  results = json.loads((run_dir / "results.json").read_text())
  assert results["steps"] == epochs * 20 and 0 < results["knn_top1"] <= 1

  evaluated = _run(_command(bucket, "rwl_jax.evaluate", "--workdir=gs://lab/runs/rwl",
                            "--nolinear"), cwd)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert json.loads((run_dir / f"eval_step_{epochs * 20}.json").read_text())["knn_top1"] == \
      pytest.approx(results["knn_top1"])

  reported = _run(_command(bucket, "rwl_jax.report", "--workdirs=gs://lab/runs/rwl",
                           "--plot=gs://lab/plots/knn.png"), cwd)
  assert reported.returncode == 0, reported.stderr[-3000:]
  assert "| rwl | rwl |" in reported.stdout
  assert (bucket / "lab" / "plots" / "knn.png").read_bytes().startswith(b"\x89PNG")

  assert not list(cwd.iterdir()), "a gs:// path was written to the working directory"


def test_workdir_urls_are_kept_or_refused_with_one_line(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(paths.workdir("runs/x")) == str(tmp_path / "runs" / "x")  # absolute, for Orbax
  assert str(paths.as_path("gs://b/run", "--workdir") / "checkpoints") == "gs://b/run/checkpoints"
  with pytest.raises(ConfigError, match=r"unsupported URL scheme 'ram://'; use a local path or gs://"):
    paths.workdir("ram://x/run")
  with pytest.raises(ConfigError, match=r"checkpoints can be written to a local path or gs:// .*not s3://"):
    paths.workdir("s3://b/run")


def test_image_folder_and_cache_in_a_bucket(cifar_dir, tmp_path):
  from local_bucket import local_bucket  # pylint: disable=g-import-not-at-top
  from rwl_jax.data import image_folder  # pylint: disable=g-import-not-at-top

  bucket = tmp_path / "bucket"
  shutil.copytree(cifar_dir, bucket / "lab" / "cifar10")
  local = image_folder.ImageFolderSource(str(cifar_dir), "test", image_size=32,
                                         cache_dir=str(tmp_path / "cache"))
  with local_bucket(str(bucket)):
    remote = image_folder.ImageFolderSource("gs://lab/cifar10", "test", image_size=32,
                                            cache_dir="gs://lab/cache")
    decoded = remote.read()
    cached = remote.read()  # the second read comes from the cache in the bucket
  assert [os.fspath(f) for f in remote.files[:2]][0].startswith("gs://lab/cifar10/test/")
  np.testing.assert_array_equal(decoded.images, local.read().images)
  np.testing.assert_array_equal(cached.images, decoded.images)
  assert len(list((bucket / "lab" / "cache").glob("image_folder_test_*.npz"))) == 1
