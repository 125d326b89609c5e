"""A TFDS dataset as a data source: a split's range read into an ArraySplit.

The only source that imports TensorFlow (tensorflow_datasets), and only when it is used. An
unprepared dataset is downloaded once, after a quick look at its download hosts
(why_unreachable), and what goes wrong is said in one actionable line (a missing module names
its pip package). Images of another size than data.image_size are fitted on read as an image
folder's are (image_folder.fit_square).
"""

from __future__ import annotations

import threading
import urllib.parse

import numpy as np
from PIL import Image

from rwl_jax.data.array_split import ArraySplit, check_image_shape, check_range, prefix_length
from rwl_jax.data.image_folder import fit_square, report_conversions
from rwl_jax.errors import ConfigError, first_line


class TfdsSource:
  """A TFDS split in record order; `read(start, end)` reads only that slice (split[start:end]).

  An unprepared dataset is downloaded once, but only after one quick look at its download hosts:
  TFDS retries a refused connection for minutes, so without internet this fails in seconds.
  """

  def __init__(self, name: str, split: str, *, data_dir: str = "", image_size: int,
               max_examples: int = 0):
    self.name, self.split, self.image_size = name, split, image_size
    where = f"could not load TFDS dataset {name!r} split {split!r}"
    try:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

      self.builder = tfds.builder(name, data_dir=data_dir or None)
      if not self.builder.is_prepared():
        _check_download_hosts(self.builder, where)
        self.builder.download_and_prepare()
      total = self.builder.info.splits[split].num_examples
    except ConfigError:
      raise
    except Exception as error:  # TFDS raises many types; the user needs one actionable line.
      raise ConfigError(f"{where}: {_tfds_problem(error, name)}") from error
    self.class_names = tuple(self.builder.info.features["label"].names)
    self.num_examples = prefix_length(total, max_examples)

  def read(self, start: int = 0, end: int | None = None) -> ArraySplit:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    start, end = check_range(start, end, self.num_examples)
    where = f"TFDS dataset {self.name!r} split {self.split}[{start}:{end}]"
    size = self.image_size
    try:
      split = _split_range(self.builder.info.splits, self.split, start, end)
      if tuple(self.builder.info.features["image"].shape) == (size, size, 3):
        dataset = self.builder.as_dataset(split=split, batch_size=-1, as_supervised=True,
                                          shuffle_files=False)
        images, labels = tfds.as_numpy(dataset)
      else:
        # Other or varying sizes (imagenette's full-size photos), or grayscale: one image at a
        # time, never batch_size=-1, which would pad every image to the largest one.
        dataset = self.builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        fitted, labels, seen = [], [], []
        for image, label in tfds.as_numpy(dataset):
          picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
          seen.append((picture.mode, picture.size))
          fitted.append(np.asarray(fit_square(picture.convert("RGB"), size), np.uint8))
          labels.append(label)
        report_conversions(where, seen, size)
        images = np.stack(fitted)
    except ConfigError:
      raise
    except Exception as error:
      raise ConfigError(f"could not read {where} ({first_line(error)})") from error
    check_image_shape(images.shape[1:], size, f"TFDS dataset {self.name!r}")
    return ArraySplit(np.asarray(images, np.uint8), np.asarray(labels, np.int32), self.class_names)


def _split_range(split_infos, split: str, start: int, end: int) -> str:
  """The TFDS split string of positions [start, end) of `split`, which may join splits with '+'
  ('train+unlabelled'[5000:5100] -> 'unlabelled[0:100]'): a slice of a joined split would
  otherwise apply to its last part only."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  parts, offset = [], 0
  for part in tfds.core.ReadInstruction.from_spec(split).to_absolute(split_infos):
    first = part.from_ or 0
    last = split_infos[part.splitname].num_examples if part.to is None else part.to
    low, high = max(start - offset, 0), min(end - offset, last - first)
    if low < high:
      parts.append(f"{part.splitname}[{first + low}:{first + high}]")
    offset += last - first
  return "+".join(parts)


# Modules TFDS imports whose pip package has another name (else the module name is the package).
_PIP_PACKAGES = {"importlib_resources": "importlib-resources", "tree": "dm-tree", "PIL": "pillow",
                 "cv2": "opencv-python", "skimage": "scikit-image", "apache_beam": "apache-beam"}
PROBE_TIMEOUT_S = 4.0  # how long why_unreachable waits for a server's answer


def _tfds_problem(error: Exception, name: str) -> str:
  """What went wrong, in words: a missing module names its pip package; no traceback."""
  cause = error
  while cause is not None and not isinstance(cause, ModuleNotFoundError):
    cause = cause.__cause__ or cause.__context__
  if cause is not None and cause.name:
    module = cause.name.split(".")[0]
    return (f"Python module {module!r} is missing (pip install {_PIP_PACKAGES.get(module, module)}"
            "); tensorflow-datasets needs it to prepare datasets")
  if type(error).__name__ == "DatasetNotFoundError":
    return f"{name!r} is not a TFDS dataset (tfds.list_builders() lists them); check data.tfds_name"
  return first_line(error)


def _check_download_hosts(builder, where: str) -> None:
  """Raises ConfigError naming both remedies unless every download host of `builder` answers.

  Why not let TFDS try: its downloader retries a failed connection 10 times with exponential
  backoff (about 3.5 minutes) and sets no timeout, and its retry count is not configurable. One
  HEAD per host through `requests` sees the same proxies and certificates that TFDS's download
  would. Builders that list no http(s) URLs (manual or custom downloads) are left to TFDS.
  The remedy is not `tfds build`: in tensorflow-datasets 4.9.10 that needs apache-beam, whose
  pinned versions need an older protobuf than TensorFlow 2.21 does.
  """
  urls = [urllib.parse.urlsplit(url) for url in builder.url_infos or {}]
  hosts = {url.netloc: url.geturl() for url in urls if url.scheme in ("http", "https")}
  for host, url in hosts.items():
    problem = why_unreachable(url)
    if problem:
      raise ConfigError(
          f"{where}: it is not prepared in {builder.data_dir} and its download host {host} "
          f"cannot be reached ({problem}); pass --config.data.image_dir=PATH (an image folder "
          "PATH/train/CLASS/*.png), or download it once on a machine with internet (this command "
          "with --config.data.tfds_data_dir=DIR does) and pass --config.data.tfds_data_dir=DIR")


def why_unreachable(url: str) -> str:
  """'' if url's server answers at all (any HTTP status), else why not (the error's type, or no
  answer in PROBE_TIMEOUT_S), within a few seconds: the download-host probe of an unprepared
  dataset."""
  import requests  # pylint: disable=g-import-not-at-top  # TFDS's own HTTP client.

  outcome = [f"no answer in {PROBE_TIMEOUT_S:g} s"]

  def probe():
    try:
      requests.head(url, timeout=PROBE_TIMEOUT_S, allow_redirects=False)
      outcome[0] = ""
    except Exception as error:  # pylint: disable=broad-except  # Any failure here fails TFDS too.
      outcome[0] = type(error).__name__
  # A daemon thread bounds the DNS lookup too, which `timeout` does not cover.
  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(PROBE_TIMEOUT_S + 1)
  return outcome[0]
