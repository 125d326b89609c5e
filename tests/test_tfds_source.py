"""The TFDS source on a real (tiny) TFDS dataset built here from the CIFAR-10 subset: range reads
(`split[a:b]`, what a process of a pod reads), prefixes, and a training run from TFDS. Then the
download path: its imports, a real download from a loopback server, and one quick clear error
line when the network (a proxy on a closed loopback port) or a module is missing.

Nothing here reaches beyond 127.0.0.1.
"""

import functools
import hashlib
import http.server
import importlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import REPO, tiny_config
from rwl_jax import train
from rwl_jax.data import tfds_source
from rwl_jax.data.order import DataShards
from rwl_jax.errors import ConfigError

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
# Port 9 (discard) is closed here: every connection through this "proxy" is refused at once.
CLOSED_PROXY = "http://127.0.0.1:9"
REMEDIES = ("--config.data.image_dir=PATH", "on a machine with internet",
            "--config.data.tfds_data_dir=DIR")


class TinyCifar(tfds.core.GeneratorBasedBuilder):
  """The unpacked CIFAR-10 subset as a TFDS dataset (registered as 'tiny_cifar')."""

  VERSION = tfds.core.Version("1.0.0")
  image_dir = None  # set by the fixture before download_and_prepare

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(32, 32, 3)),
        "label": tfds.features.ClassLabel(names=sorted(p.name for p in
                                                       (self.image_dir / "train").iterdir()))}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in ("train", "test")}

  def _generate_examples(self, split):
    for class_dir in sorted((self.image_dir / split).iterdir()):
      for path in sorted(class_dir.iterdir()):
        yield f"{class_dir.name}/{path.name}", {"image": np.asarray(Image.open(path).convert("RGB")),
                                                "label": class_dir.name}


@pytest.fixture(scope="module")
def tfds_dir(cifar_dir, tmp_path_factory):
  TinyCifar.image_dir = cifar_dir
  data_dir = tmp_path_factory.mktemp("tfds")
  tfds.builder("tiny_cifar", data_dir=str(data_dir)).download_and_prepare()
  return data_dir


def test_range_reads_and_prefix(tfds_dir):
  source = tfds_source.TfdsSource("tiny_cifar", "train", data_dir=str(tfds_dir), image_size=32)
  assert source.num_examples == 640 and source.class_names[0] == "airplane"
  whole = source.read()
  assert whole.images.shape == (640, 32, 32, 3) and whole.images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(whole.labels), [64] * 10)
  part = source.read(100, 300)
  np.testing.assert_array_equal(part.images, whole.images[100:300])
  np.testing.assert_array_equal(part.labels, whole.labels[100:300])
  # Two processes' ranges tile the split.
  shards = [DataShards(640, 2, process_index=p, process_count=2) for p in (0, 1)]
  halves = [source.read(*s.process_range()) for s in shards]
  np.testing.assert_array_equal(np.concatenate([h.images for h in halves]), whole.images)
  limited = tfds_source.TfdsSource("tiny_cifar", "test", data_dir=str(tfds_dir), image_size=32,
                                   max_examples=50)
  assert limited.num_examples == 50 and len(limited.read()) == 50


@pytest.mark.slow
def test_training_from_tfds(tfds_dir, tmp_path):
  config = tiny_config("", tmp_path / "cache")
  config.data.tfds_name = "tiny_cifar"
  config.data.tfds_data_dir = str(tfds_dir)
  config.num_epochs = 1
  config.eval.linear_epochs = 1
  results = train.train_and_evaluate(config, str(tmp_path / "work"))
  assert results["train_examples"] == 640 and results["test_examples"] == 160
  assert results["data"] == "tfds:tiny_cifar" and 0.0 <= results["knn_top1"] <= 1.0


class LoopbackCifar(tfds.core.GeneratorBasedBuilder):
  """Random 32x32 images downloaded (as a .tar.gz holding an .npz) from a loopback HTTP server."""

  VERSION = tfds.core.Version("1.0.0")
  url_infos = None  # {url: UrlInfo}, set by the fixture; TFDS validates the download against it

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(32, 32, 3)),
        "label": tfds.features.ClassLabel(names=["a", "b"])}), supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    extracted = dl_manager.download_and_extract(next(iter(self.url_infos)))
    return {"train": self._generate_examples(extracted / "data.npz")}

  def _generate_examples(self, path):
    with np.load(path) as data:
      for index, (image, label) in enumerate(zip(data["images"], data["labels"])):
        yield index, {"image": image, "label": label}


def _no_network(monkeypatch):
  """Every non-loopback HTTP(S) request goes to a refused proxy; any other connection raises."""
  for name in PROXY_VARS:
    monkeypatch.setenv(name, CLOSED_PROXY)
  monkeypatch.delenv("NO_PROXY", raising=False)
  monkeypatch.delenv("no_proxy", raising=False)
  connect = socket.socket.connect

  def loopback_only(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1"):
      raise OSError(f"test blocked a connection to {address}")
    return connect(sock, address)
  monkeypatch.setattr(socket.socket, "connect", loopback_only)


def _offline_env(**extra):
  env = {k: v for k, v in os.environ.items() if k.upper() != "NO_PROXY"}
  return dict(env, **dict.fromkeys(PROXY_VARS, CLOSED_PROXY), JAX_PLATFORMS="cpu", **extra)


def test_download_path_imports(tmp_path):
  """What `download_and_prepare` needs before its first connection is installed: tensorflow-datasets
  4.9 imports importlib_resources without declaring it on Python >= 3.9."""
  for module in ("importlib_resources", "requests", "promise", "tree", "etils.epath", "etils.enp"):
    importlib.import_module(module)
  manager = tfds.download.DownloadManager(download_dir=tmp_path / "downloads")
  assert manager.download_dir.is_dir()
  builder = tfds.builder("cifar10", data_dir=str(tmp_path))
  assert not builder.is_prepared()
  # The checksums file read through importlib_resources, and the URLs the source probes.
  assert any("cs.toronto.edu" in url for url in builder.url_infos)


@pytest.fixture
def loopback_url(tmp_path, monkeypatch):
  """A loopback HTTP server holding data.tar.gz; LoopbackCifar.url_infos points at it."""
  rng = np.random.default_rng(0)
  images, labels = rng.integers(0, 256, (20, 32, 32, 3), np.uint8), np.arange(20) % 2
  buffer = io.BytesIO()
  np.savez(buffer, images=images, labels=labels)
  with tarfile.open(tmp_path / "data.tar.gz", "w:gz") as archive:
    info = tarfile.TarInfo("data.npz")
    info.size = len(buffer.getvalue())
    archive.addfile(info, io.BytesIO(buffer.getvalue()))
  payload = (tmp_path / "data.tar.gz").read_bytes()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  url = f"http://127.0.0.1:{server.server_address[1]}/data.tar.gz"
  monkeypatch.setattr(LoopbackCifar, "url_infos", {url: tfds.core.download.checksums.UrlInfo(
      size=tfds.core.utils.Size(len(payload)), checksum=hashlib.sha256(payload).hexdigest(),
      filename="data.tar.gz")})
  monkeypatch.setenv("NO_PROXY", "127.0.0.1")
  monkeypatch.setenv("no_proxy", "127.0.0.1")
  yield images
  server.shutdown()


def test_download_from_loopback(loopback_url, tmp_path):
  """The whole download path (probe, TFDS download manager, extraction, preparation) offline."""
  source = tfds_source.TfdsSource("loopback_cifar", "train", data_dir=str(tmp_path / "tfds"),
                                  image_size=32)
  images = source.read().images
  assert source.num_examples == 20 and images.shape == (20, 32, 32, 3)
  # TFDS stores records in its own order; the same images came through.
  order = lambda a: a[np.lexsort(a.reshape(len(a), -1).T[::-1])]
  np.testing.assert_array_equal(order(images), order(loopback_url))


def test_no_network_fails_fast(tmp_path, monkeypatch):
  _no_network(monkeypatch)
  start = time.monotonic()
  with pytest.raises(ConfigError) as error:
    tfds_source.TfdsSource("cifar10", "train", data_dir=str(tmp_path), image_size=32)
  elapsed = time.monotonic() - start
  message = str(error.value)
  assert elapsed < 60, elapsed  # TFDS's own retries took about 205 s; this takes about 1 s.
  assert "\n" not in message and "www.cs.toronto.edu cannot be reached" in message, message
  assert all(remedy in message for remedy in REMEDIES), message


def test_silent_host_times_out():
  """A host that accepts connections but never answers (a black hole) costs seconds, not minutes."""
  # pylint: disable=protected-access
  with socket.create_server(("127.0.0.1", 0)) as silent:
    start = time.monotonic()
    problem = tfds_source.why_unreachable(f"http://127.0.0.1:{silent.getsockname()[1]}/x.tar.gz")
  assert problem and time.monotonic() - start < tfds_source.PROBE_TIMEOUT_S + 3


def test_unknown_dataset_name(tmp_path):
  with pytest.raises(ConfigError, match="'no_such_dataset_rwl' is not a TFDS dataset"):
    tfds_source.TfdsSource("no_such_dataset_rwl", "train", data_dir=str(tmp_path), image_size=32)


def test_missing_module_names_its_package(tmp_path):
  """A missing module is reported as such (with its pip package), not blamed on the network."""
  script = ("import sys; sys.modules['importlib_resources'] = None\n"
            "from rwl_jax.data.tfds_source import TfdsSource\n"
            "from rwl_jax.errors import ConfigError\n"
            "try:\n"
            f"  TfdsSource('cifar10', 'train', data_dir={str(tmp_path)!r}, image_size=32)\n"
            "except ConfigError as error:\n"
            "  print('ERROR', error)\n")
  done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_offline_env(),
                        capture_output=True, text=True, timeout=300)
  line = next(l for l in done.stdout.splitlines() if l.startswith("ERROR "))
  assert "module 'importlib_resources' is missing (pip install importlib-resources)" in line, line
  assert "reached" not in line


def test_command_line_without_network(tmp_path):
  """`python -m rwl_jax.main` with the default TFDS data, offline: one error line, quickly."""
  start = time.monotonic()
  done = subprocess.run(
      [sys.executable, "-m", "rwl_jax.main", "--config=configs/cifar10_rwl.py",
       f"--workdir={tmp_path / 'work'}", f"--config.data.tfds_data_dir={tmp_path / 'tfds'}"],
      cwd=REPO, env=_offline_env(), capture_output=True, text=True, timeout=300)
  elapsed = time.monotonic() - start
  assert done.returncode == 2, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr[-3000:]
  assert all(remedy in errors[0] for remedy in REMEDIES), errors[0]
  assert elapsed < 60, elapsed  # About 2.5 s here (205 s before the probe).
