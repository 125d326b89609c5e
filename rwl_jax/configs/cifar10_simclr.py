"""SimCLR (NT-Xent) on CIFAR-10 with exactly the RWL reference settings, for a like-for-like baseline.

Same encoder, head, views, optimiser, temperature 0.4 and epochs as configs/cifar10_rwl.py.

  python -m rwl_jax.main --config=configs/cifar10_simclr.py --workdir=runs/simclr
"""

from rwl_jax.configs import common


def get_config(arg: str | None = None):
  config = common.get_config()
  config.method = "simclr"
  return common.variant(config, arg)
