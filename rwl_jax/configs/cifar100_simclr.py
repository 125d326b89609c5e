"""SimCLR (NT-Xent) on CIFAR-100 with exactly configs/cifar100_rwl.py's settings (the like-for-like
baseline, as configs/cifar10_simclr.py is on CIFAR-10). No accuracy measured yet.

  python -m rwl_jax.main --config=cifar100_simclr --workdir=runs/cifar100_simclr
"""

from rwl_jax.configs import cifar100_rwl, common


def get_config(arg: str | None = None):
  config = common.get_config()
  config.method = "simclr"
  return common.variant(cifar100_rwl.cifar100_data(config), arg)
