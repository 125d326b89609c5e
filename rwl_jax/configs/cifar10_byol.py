"""BYOL on CIFAR-10 with solo-learn's CIFAR-10 settings (the BYOL paper has no CIFAR-10 recipe).

Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020. Settings from solo-learn
scripts/pretrain/cifar/byol.yaml: ResNet-18, projector 512-4096-256 with BatchNorm, predictor
256-4096-256, EMA momentum 0.99 -> 1 (cosine), LARS lr 1.0 (eta 0.02, no weight decay or trust
ratio on biases and BatchNorm), weight decay 1e-5, batch 256, warm-up 10 epochs then cosine, 1000
epochs. Views from solo-learn scripts/pretrain/cifar/augmentations/asymmetric.yaml (both views:
crop scale 0.08-1, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2, flip 0.5, no blur;
solarisation 0.0 on the first view and 0.2 on the second). Not modelled here: solo-learn's bicubic
crop resize (bilinear here), LARS lr clipping, per-view BatchNorm (one pass over both views), mixed
precision.

  python -m rwl_jax.main --config=configs/cifar10_byol.py --workdir=runs/byol
"""

from rwl_jax.configs import common


def get_config(arg: str | None = None):
  config = common.get_config()
  config.method = "byol"
  config.model.projector_dims = (4096, 256)
  config.model.projector_batch_norm = True
  config.model.predictor_dims = (4096, 256)
  config.ema.base_momentum = 0.99
  common.solo_learn_lars(config, learning_rate=1.0, weight_decay=1e-5)
  solo_learn_asymmetric_views(config)
  return common.variant(config, arg)


def solo_learn_asymmetric_views(config) -> None:
  """solo-learn's CIFAR views for BYOL and Barlow Twins (augmentations/asymmetric.yaml): the
  first view never solarised, the second with probability 0.2; neither blurred at 32 px."""
  common.solo_learn_views(config, crop_scale=(0.08, 1.0), solarize_prob=(0.0, 0.2))

