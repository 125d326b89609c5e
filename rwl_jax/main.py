"""Command line: `python -m rwl_jax.main --config=configs/cifar10_rwl.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.num_epochs=30 --config.data.image_dir=PATH`.
Bad input ends in one `error: ...` line and exit status 2.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rwl_jax import train
from rwl_jax.errors import ConfigError, RunError
from rwl_jax.metrics import configure_logging

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  configure_logging()
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, RunError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
