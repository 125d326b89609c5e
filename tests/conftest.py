"""Shared fixtures: a small real CIFAR-10 subset unpacked from ../shared/data, tiny configs."""

from __future__ import annotations

import collections
import os
import pathlib
import socket
import subprocess
import sys
import tarfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# A persistent compilation cache shared by the tests and the processes they start: the same small
# programs (steps, feature functions, probes) compile once per machine, not once per test.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(os.environ.get("RWL_JAX_TEST_CACHE",
                                                      pathlib.Path.home() / ".cache" / "rwl_jax"))
                          / "jax-test-compilation-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
SHARED_DATA = pathlib.Path(os.environ.get("RWL_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))


def _joined_parts(paths):
  """A file-like object reading the concatenation of the archive's parts."""

  class Joined:
    def __init__(self):
      self._files = [open(p, "rb") for p in paths]
      self._index = 0

    def read(self, size=-1):
      chunks = []
      while self._index < len(self._files) and (size < 0 or size > 0):
        chunk = self._files[self._index].read(size)
        if not chunk:
          self._files[self._index].close()
          self._index += 1
          continue
        chunks.append(chunk)
        if size > 0:
          size -= len(chunk)
      return b"".join(chunks)

  return Joined()


def unpack_cifar_subset(destination: pathlib.Path, per_class: dict[str, int]) -> pathlib.Path:
  """Writes the first per_class[split] PNGs of every class of each split under destination."""
  parts = sorted(SHARED_DATA.glob("cifar10-png.tar.gz.part*"))
  if not parts:
    pytest.fail(f"CIFAR-10 PNG parts not found in {SHARED_DATA} (set RWL_JAX_SHARED_DATA)")
  counts = collections.Counter()
  wanted_total = sum(n * 10 for n in per_class.values())
  with tarfile.open(fileobj=_joined_parts(parts), mode="r|gz") as archive:
    for member in archive:
      if not member.isfile() or not member.name.endswith(".png"):
        continue
      split, class_name = pathlib.PurePosixPath(member.name).parts[-3:-1]
      if split not in per_class or counts[split, class_name] >= per_class[split]:
        continue
      target = destination / split / class_name / pathlib.PurePosixPath(member.name).name
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(archive.extractfile(member).read())
      counts[split, class_name] += 1
      if sum(counts.values()) == wanted_total:
        break
  return destination


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> pathlib.Path:
  """64 train and 16 test images per class of the real (lossless) CIFAR-10."""
  return unpack_cifar_subset(tmp_path_factory.mktemp("cifar10"), {"train": 64, "test": 16})


def tiny_config(image_dir: pathlib.Path, cache_dir: pathlib.Path, method: str = "rwl"):
  """The reference config shrunk to seconds on a CPU: narrow ResNet-18, small batch, few epochs."""
  from rwl_jax.configs import common  # pylint: disable=g-import-not-at-top

  config = common.get_config()
  config.method = method
  config.num_epochs = 2
  config.global_batch_size = 32
  config.model.encoder = "resnet10"  # the tiny encoder: half of ResNet-18's layers to compile
  config.model.width = 8
  config.model.projector_dims = (32, 16)
  config.model.predictor_dims = (32, 16)  # byol, simsiam and their GSG variants
  config.data.image_dir = str(image_dir)
  config.data.cache_dir = str(cache_dir)
  config.eval.batch_size = 128
  config.eval.linear_epochs = 5
  config.eval.probe_batch_size = 32
  config.log_every_steps = 5
  config.checkpoint_every_epochs = 1
  return config


# A run of the reference config shrunk to seconds, through the real command line:
# TINY_RUN_EPOCHS epochs of TINY_RUN_STEPS_PER_EPOCH steps on cifar_dir's 640 training images,
# a checkpoint every epoch (the asynchronous-save and full-disk tests).
TINY_RUN_STEPS_PER_EPOCH = 640 // 64
TINY_RUN_EPOCHS = 3


def tiny_run_command(workdir, cifar_dir, cache, *extra) -> list[str]:
  return [sys.executable, "-m", "rwl_jax.main", "--config=configs/cifar10_rwl.py",
          f"--workdir={workdir}", f"--config.data.image_dir={cifar_dir}",
          f"--config.data.cache_dir={cache}", f"--config.num_epochs={TINY_RUN_EPOCHS}",
          "--config.global_batch_size=64", "--config.model.width=4",
          "--config.model.projector_dims=(16,8)", "--config.log_every_steps=1",
          "--config.checkpoint_every_epochs=1", "--config.keep_checkpoints=3",
          "--config.eval.linear_epochs=1", "--config.eval.probe_batch_size=32", *extra]


def subprocess_environment(hook_dir=None, **variables) -> dict[str, str]:
  """A CPU subprocess's environment; hook_dir's sitecustomize.py, if given, runs in it first."""
  path = ([str(hook_dir)] if hook_dir else []) + [str(REPO), os.environ.get("PYTHONPATH", "")]
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(path), **variables)


def free_port() -> int:
  """A TCP port free on localhost now, for a jax.distributed coordinator."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_on_devices(script: str, devices: int = 8, timeout: int = 900):
  """Runs `script` in a fresh Python on `devices` simulated CPU devices (the count is fixed when
  JAX starts) and returns the JSON it printed on a line starting with 'RESULT '."""
  import json  # pylint: disable=g-import-not-at-top

  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert done.returncode == 0, done.stderr[-3000:]
  line = next(l for l in done.stdout.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def interrupt_after_logging(command, cwd, metrics: pathlib.Path, stop: int,
                            start_timeout: float = 300) -> tuple[int, str]:
  """Starts a training command, sends it `stop` once metrics.jsonl has two rows of training
  averages (some steps done, before the first checkpoint); returns (exit status, stderr)."""
  process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  deadline = time.time() + start_timeout
  while time.time() < deadline and not (metrics.exists()
                                        and metrics.read_text().count('"loss"') >= 2):
    time.sleep(0.5)
  process.send_signal(stop)
  _, stderr = process.communicate(timeout=180)
  return process.returncode, stderr


def declared_minimums() -> dict[str, str]:
  """{package: version} pinned in .ci/minimum-versions.txt, the floors CI tests."""
  pins = {}
  for line in (REPO / ".ci" / "minimum-versions.txt").read_text().splitlines():
    requirement = line.split("#")[0].strip()
    if requirement:
      name, version = requirement.split("==")
      pins[name.lower()] = version
  return pins
