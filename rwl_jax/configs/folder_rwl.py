"""RWL on your own folder of images: any sizes, formats and colour modes, labelled or not.

  python -m rwl_jax.main --config=folder_rwl --config.data.image_dir=PATH --workdir=runs/mine
  python -m rwl_jax.export --workdir=runs/mine --format=safetensors

PATH may be laid out (rwl_jax/data/image_folder.py):
- PATH/IMAGE, or PATH/train/IMAGE [+ PATH/test/IMAGE]: unlabelled. The run trains and saves
  checkpoints; with no labels there is no kNN / linear-probe evaluation (one line says so) and
  results.json holds no accuracy, unless --config.data.eval_image_dir=LABELLED_PATH gives a
  labelled folder to evaluate with.
- PATH/train/CLASS/IMAGE [+ PATH/test/CLASS/IMAGE]: labelled; without test/ a seeded 10 % of
  each class (data.holdout_fraction) is held out for the evaluation.

Every image is resized once on read to 96 x 96 (shorter side to 96, bicubic, centre crop) and
converted to RGB, decoded by a process per core and cached (data.cache_dir), then held in memory as
uint8: 27.6 KB per image, 2.8 GB per 100,000 images. --config.data.image_size=N changes it.

The recipe is configs/stl10_rwl.py's for 96 px photographs: ResNet-18 with the ImageNet stem,
RandomResizedCrop(96, scale 0.08-1), flip, jitter, grayscale, ImageNet mean/std; SGD lr 0.1,
batch 256 (a folder needs at least that many images: lower --config.global_batch_size for a
small one), 100 epochs. `:smoke` is the minutes-on-a-CPU variant.
"""

from rwl_jax.configs import common
from rwl_jax.data.recipe import IMAGENET_MEAN, IMAGENET_STD


def get_config(arg: str | None = None):
  config = common.get_config()
  config.method = "rwl"
  config.data.image_size = 96
  config.model.stem = "imagenet"
  config.augment.crop_scale = (0.08, 1.0)
  config.augment.mean = IMAGENET_MEAN
  config.augment.std = IMAGENET_STD
  return common.variant(config, arg)
