"""RWL on Imagenette (10 easy ImageNet classes) at 224 px with a ResNet-50 and the ImageNet stem.

  python -m rwl_jax.main --config=imagenette_rwl --workdir=runs/imagenette_rwl
  python -m rwl_jax.main --config=imagenette_rwl --workdir=runs/imagenette_rwl \
      --config.data.image_dir=PATH/imagenette2 --config.data.eval_split=val
  python -m rwl_jax.main --config=imagenette_rwl:smoke --workdir=/tmp/inette   # a CPU check

No accuracy has been measured with this config yet, and its optimiser settings are the CIFAR
recipe's (configs/common.py: SGD lr 0.1, batch 256, 100 epochs, temperature 0.4), not tuned here.

Data, either way resized once on read to 224 x 224 (shorter side to 224, bicubic, centre crop;
rwl_jax/data/image_folder.py) and held in memory as uint8: 9,469 train images = 1.4 GB, 3,925
validation images = 0.6 GB (also on each device with data.augment_on=device). That is the limit of
this design: ImageNet-100 (126,689 images) would need 19 GB of host memory and full ImageNet
190 GB, so neither is feasible this way.
- TFDS "imagenette/full-size-v2" (1.5 GB download, once; its test split is "validation", the
  images have varying sizes and are resized on every run, about a minute);
- or the fast.ai tarball imagenette2.tgz unpacked: PATH/imagenette2/train/WNID/*.JPEG and
  .../val/WNID/*.JPEG, with --config.data.eval_split=val (decoded once, then cached).

Model: ResNet-50 (2048-d features), ImageNet stem (conv 7x7 stride 2 + max-pool), projector
2048-2048-128 as SimCLR's ImageNet head. Views: RandomResizedCrop(224, scale 0.08-1), flip,
jitter, grayscale; ImageNet mean/std (torchvision's (0.485, 0.456, 0.406), (0.229, 0.224,
0.225)). No Gaussian blur is set here.
"""

from rwl_jax.configs import common
from rwl_jax.data.recipe import IMAGENET_MEAN, IMAGENET_STD


def get_config(arg: str | None = None):
  config = common.get_config()
  config.method = "rwl"
  config.data.tfds_name = "imagenette/full-size-v2"
  config.data.eval_split = "validation"
  config.data.image_size = 224
  config.model.encoder = "resnet50"
  config.model.stem = "imagenet"
  config.model.projector_dims = (2048, 128)
  config.augment.crop_scale = (0.08, 1.0)
  config.augment.mean = IMAGENET_MEAN
  config.augment.std = IMAGENET_STD
  config.eval.batch_size = 256  # 224 px ResNet-50 features: smaller feature batches
  return common.variant(config, arg)
