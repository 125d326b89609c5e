"""RWL (random-walk Laplacian loss) on CIFAR-10 with the paper's reference settings.

Moummad, Pasdeloup, Farrugia, GSP Workshop 2023; recipe in configs/common.py.

  python -m rwl_jax.main --config=configs/cifar10_rwl.py --workdir=runs/rwl
  python -m rwl_jax.main --config=configs/cifar10_rwl.py --workdir=runs/rwl \
      --config.data.image_dir=/path/to/cifar10 --config.num_epochs=20
"""

from rwl_jax.configs import common


def get_config(arg: str | None = None):
  config = common.get_config()
  config.method = "rwl"
  return common.variant(config, arg)
