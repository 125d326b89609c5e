"""ArraySplit, the in-memory form every data source reads into, and the checks the sources share.

CIFAR-sized datasets fit in host (and accelerator) memory, so each process reads its range of a
split once (order.DataShards says which) into `ArraySplit(images [N, H, W, 3] uint8, labels [N]
int32)`; the input pipelines index into it. The sources (tfds_source.TfdsSource,
image_folder.ImageFolderSource) import this module and sources.py imports them, so what they
share lives here, below both.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rwl_jax.errors import ConfigError

UNLABELLED = -1  # the label of an image without one (as TFDS gives STL-10's unlabelled split)


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """Examples of an image dataset (a whole split or one process's range), in memory.

  An unlabelled split has no class names and every label UNLABELLED (-1); a TFDS split may mix
  both (STL-10's 'train+unlabelled').
  """

  images: np.ndarray  # [N, H, W, 3] uint8
  labels: np.ndarray  # [N] int32, UNLABELLED where there is none
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def labelled(self) -> bool:
    """Whether the split has classes (some of its examples may still be UNLABELLED)."""
    return bool(self.class_names)


def prefix_length(total: int, max_examples: int) -> int:
  """How many of a split's `total` examples a source keeps: the prefix of max_examples (> 0), else
  all of them."""
  return min(total, max_examples) if max_examples > 0 else total


def check_range(start: int, end: int | None, num_examples: int) -> tuple[int, int]:
  """(start, end) of a source's read(start, end), end None = num_examples; ValueError unless
  0 <= start < end <= num_examples."""
  end = num_examples if end is None else end
  if not 0 <= start < end <= num_examples:
    raise ValueError(f"range [{start}, {end}) is outside the split's {num_examples} examples")
  return start, end


def check_image_shape(shape: tuple[int, ...], image_size: int, where: str) -> None:
  """ConfigError unless the images read from `where` are (image_size, image_size, 3)."""
  if tuple(shape) != (image_size, image_size, 3):
    raise ConfigError(f"{where} has images of shape {tuple(shape)}, expected "
                      f"({image_size}, {image_size}, 3) (data.image_size={image_size})")
