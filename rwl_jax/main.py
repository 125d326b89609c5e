"""Command line: `python -m rwl_jax.main --config=configs/cifar10_rwl.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.num_epochs=30 --config.data.image_dir=PATH`.
On a multi-process job add --distributed (cli.run starts JAX's runtime). Bad input ends in one
`error: ...` line and exit status 2.
"""

from absl import flags
from ml_collections import config_flags

from rwl_jax import cli, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main():
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main, distributed=True)
