"""SimSiam on CIFAR-10 with the paper's CIFAR-10 settings.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021, Appendix D (CIFAR
experiments): ResNet-18 (CIFAR variant), projector 512-2048-2048 with BatchNorm, predictor
2048-512-2048 (bottleneck), SGD lr 0.03 x 512 / 256 = 0.06, momentum 0.9, weight decay 5e-4,
batch 512, cosine schedule, 800 epochs. Not modelled here: the BatchNorm on the projector's output
layer, per-view BatchNorm (one pass over both views).

  python -m rwl_jax.main --config=configs/cifar10_simsiam.py --workdir=runs/simsiam
"""

from rwl_jax.configs import common


def get_config(arg: str | None = None):
  config = common.get_config()
  config.method = "simsiam"
  config.num_epochs = 800
  config.global_batch_size = 512
  config.model.projector_dims = (2048, 2048)
  config.model.projector_batch_norm = True
  config.model.predictor_dims = (512, 2048)
  config.optimizer.learning_rate = 0.06
  config.optimizer.weight_decay = 5e-4
  return common.variant(config, arg)
