"""BYOL with guided stop-gradient (GSG) pairing on CIFAR-10: configs/cifar10_byol.py's settings.

Lee & Lee, "Implicit Contrastive Representation Learning with Guided Stop-gradient", NeurIPS 2023;
official code github.com/bych-lee/gsg (ImageNet only). GSG changes only which view of each image
is predicted and which is the target (a random pairing of the batch's images, see
rwl_jax/losses/gsg.py), so every other setting is BYOL's (solo-learn CIFAR-10, see there); the
loss is GSG's negative cosine, as in the official code for both BYOL-GSG and SimSiam-GSG. Views are
BYOL's asymmetric pair: the paired image B's views are rows of the same two view batches, so each
of the four views keeps its own first- or second-view probabilities (solarisation 0.0 / 0.2).

  python -m rwl_jax.main --config=configs/cifar10_byol_gsg.py --workdir=runs/byol_gsg
"""

from rwl_jax.configs import cifar10_byol


def get_config(arg: str | None = None):
  config = cifar10_byol.get_config(arg)
  config.method = "byol_gsg"
  return config
