"""RWL on CIFAR-100 with the CIFAR-10 reference recipe (configs/common.py) and CIFAR-100's mean/std.

Everything but the data is configs/cifar10_rwl.py's: CIFAR ResNet-18, head 512-512-512, batch 256,
SGD lr 0.1, 100 epochs, temperature 0.4, RandomResizedCrop(32, 0.2-1); kNN (k=200) and the linear
probe over the 100 classes. No accuracy has been measured with this config yet.

  python -m rwl_jax.main --config=cifar100_rwl --workdir=runs/cifar100_rwl
  python -m rwl_jax.main --config=cifar100_rwl:smoke --workdir=/tmp/c100   # minutes on a CPU

Data: TFDS "cifar100" (50,000 train / 10,000 test 32x32 images, 150 MB as uint8; downloaded
once), or offline an image folder PATH/train/CLASS/*.png + PATH/test/CLASS/*.png with
--config.data.image_dir=PATH (fine labels: 100 class folders).

Normalisation: CIFAR-100's per-channel training-set mean (0.5071, 0.4865, 0.4409) and std
(0.2673, 0.2564, 0.2762), the values CIFAR-100 code commonly uses (computed as
np.mean/np.std(train_images / 255, axis=(0, 1, 2))); not recomputed here, where CIFAR-100 cannot
be downloaded (some copies round the last std to 0.2761).
"""

from rwl_jax.configs import common

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def cifar100_data(config):
  """Points a CIFAR-10 config at CIFAR-100 (TFDS 'cifar100', its own mean/std)."""
  config.data.tfds_name = "cifar100"
  config.augment.mean = CIFAR100_MEAN
  config.augment.std = CIFAR100_STD
  return config


def get_config(arg: str | None = None):
  config = common.get_config()
  config.method = "rwl"
  return common.variant(cifar100_data(config), arg)
