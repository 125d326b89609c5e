"""VICReg on CIFAR-10 with solo-learn's CIFAR-10 settings (the VICReg paper has no CIFAR-10 recipe).

Bardes, Ponce, LeCun, "VICReg", ICLR 2022; loss coefficients (25, 25, 1) as in the paper. Settings
from solo-learn scripts/pretrain/cifar/vicreg.yaml: ResNet-18, projector 512-2048-2048-2048 with
BatchNorm, LARS lr 0.3 (eta 0.02, no weight decay or trust ratio on biases and BatchNorm), weight
decay 1e-4, batch 256, warm-up 10 epochs then cosine, 1000 epochs. Views (its own augmentations
section, the same for both views): crop scale 0.2-1, colour jitter (0.4, 0.4, 0.2, 0.1) with p 0.8,
grayscale 0.2, flip 0.5, no blur, solarisation 0.1. Not modelled here: solo-learn's bicubic crop
resize (bilinear here), LARS lr clipping, mixed precision.

  python -m rwl_jax.main --config=configs/cifar10_vicreg.py --workdir=runs/vicreg
"""

from rwl_jax.configs import common


def get_config(arg: str | None = None):
  config = common.get_config()
  config.method = "vicreg"
  config.model.projector_dims = (2048, 2048, 2048)
  config.model.projector_batch_norm = True
  config.vicreg.sim_coeff = 25.0
  config.vicreg.std_coeff = 25.0
  config.vicreg.cov_coeff = 1.0
  common.solo_learn_lars(config, learning_rate=0.3, weight_decay=1e-4)
  # solo-learn's vicreg.yaml: both views alike, solarised with probability 0.1.
  common.solo_learn_views(config, crop_scale=(0.2, 1.0), solarize_prob=(0.1, 0.1))
  return common.variant(config, arg)
