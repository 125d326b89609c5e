"""SimSiam with guided stop-gradient (GSG) pairing on CIFAR-10: configs/cifar10_simsiam.py's settings.

Lee & Lee, "Implicit Contrastive Representation Learning with Guided Stop-gradient", NeurIPS 2023;
official code github.com/bych-lee/gsg (ImageNet only). GSG changes only which view of each image
is predicted and which is the target (a random pairing of the batch's images, see
rwl_jax/losses/gsg.py), so every other setting is SimSiam's CIFAR-10 recipe (see there).

  python -m rwl_jax.main --config=configs/cifar10_simsiam_gsg.py --workdir=runs/simsiam_gsg
"""

from rwl_jax.configs import cifar10_simsiam


def get_config(arg: str | None = None):
  config = cifar10_simsiam.get_config(arg)
  config.method = "simsiam_gsg"
  return config
