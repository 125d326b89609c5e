"""RWL on STL-10 at 96 px: pretraining on the 105,000 images of "train+unlabelled", evaluation
with the 5,000 labelled train images (kNN bank, linear probe) against the 8,000 test images.

  python -m rwl_jax.main --config=stl10_rwl --workdir=runs/stl10_rwl
  python -m rwl_jax.main --config=stl10_rwl:smoke --workdir=/tmp/stl10   # minutes on a CPU

No accuracy has been measured with this config yet. What differs from configs/common.py:

- data: TFDS "stl10" (2.6 GB download, once), train_split "train+unlabelled" (the unlabelled
  images carry label -1 in TFDS; only the online probe reads training labels, and it refuses
  them), eval_train_split "train", eval_split "test". In memory: 105,000 x 96 x 96 x 3 uint8 =
  2.9 GB on the host, and the same on each device with data.augment_on=device.
  An image folder works too: PATH/train/IMAGE (the unlabelled and train images, unlabelled) and
  --config.data.eval_image_dir=PATH2 with PATH2/train/CLASS/IMAGE + PATH2/test/CLASS/IMAGE.
- encoder: ResNet-18 with the ImageNet stem (conv 7x7 stride 2 + max-pool): 96 px become 24 x 24
  feature maps, about half the cost per image of a CIFAR ResNet-18 at 32 px; the CIFAR stem
  would keep 96 x 96 maps (9x the CIFAR cost), --config.model.stem=cifar to try it.
- views: RandomResizedCrop(96, scale 0.08-1), the SimCLR/torchvision default for images with
  room to crop (the 0.2 lower bound is the 32 px CIFAR choice); flip, jitter and grayscale as in
  common.py. Gaussian blur is not set here.
- normalisation: STL-10 mean (0.4467, 0.4398, 0.4066) and std (0.2603, 0.2566, 0.2713), the values
  STL-10 code commonly uses; not recomputed here (STL-10 cannot be downloaded on this machine).
"""

from rwl_jax.configs import common

STL10_MEAN = (0.4467, 0.4398, 0.4066)
STL10_STD = (0.2603, 0.2566, 0.2713)


def get_config(arg: str | None = None):
  config = common.get_config()
  config.method = "rwl"
  config.data.tfds_name = "stl10"
  config.data.train_split = "train+unlabelled"
  config.data.eval_train_split = "train"
  config.data.eval_split = "test"
  config.data.image_size = 96
  config.model.stem = "imagenet"
  config.augment.crop_scale = (0.08, 1.0)
  config.augment.mean = STL10_MEAN
  config.augment.std = STL10_STD
  return common.variant(config, arg)
