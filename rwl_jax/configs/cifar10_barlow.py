"""Barlow Twins on CIFAR-10 with solo-learn's CIFAR-10 settings (the paper has no CIFAR-10 recipe).

Zbontar et al., "Barlow Twins", ICML 2021; lambda = 0.0051 as in the official code. Settings from
solo-learn scripts/pretrain/cifar/barlow.yaml: ResNet-18, projector 512-2048-2048-2048 with
BatchNorm, loss scale 0.1, LARS lr 0.3 (eta 0.02, no weight decay or trust ratio on biases and
BatchNorm), weight decay 1e-4, batch 256, warm-up 10 epochs then cosine, 1000 epochs. Views from
solo-learn scripts/pretrain/cifar/augmentations/asymmetric.yaml, as BYOL's (both views: crop scale
0.08-1, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2, flip 0.5, no blur;
solarisation 0.0 on the first view and 0.2 on the second). Not modelled here: solo-learn's bicubic
crop resize (bilinear here), LARS lr clipping, mixed precision.

  python -m rwl_jax.main --config=configs/cifar10_barlow.py --workdir=runs/barlow
"""

from rwl_jax.configs import cifar10_byol, common


def get_config(arg: str | None = None):
  config = common.get_config()
  config.method = "barlow"
  config.model.projector_dims = (2048, 2048, 2048)
  config.model.projector_batch_norm = True
  config.barlow.lambd = 0.0051
  config.barlow.scale = 0.1
  common.solo_learn_lars(config, learning_rate=0.3, weight_decay=1e-4)
  cifar10_byol.solo_learn_asymmetric_views(config)
  return common.variant(config, arg)
