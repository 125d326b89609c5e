"""BYOL on CIFAR-10 with solo-learn's CIFAR-10 settings (the BYOL paper has no CIFAR-10 recipe).

Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020. Settings from solo-learn
scripts/pretrain/cifar/byol.yaml: ResNet-18, projector 512-4096-256 with BatchNorm, predictor
256-4096-256, EMA momentum 0.99 -> 1 (cosine), LARS lr 1.0 (eta 0.02, no weight decay or trust
ratio on biases and BatchNorm), weight decay 1e-5, batch 256, warm-up 10 epochs then cosine, 1000
epochs. Not modelled here: solo-learn's asymmetric views (blur, solarisation; the common views are
used), LARS lr clipping, per-view BatchNorm (one pass over both views), mixed precision.

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
  return common.variant(config, arg)
