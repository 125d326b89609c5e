"""Command line: `python -m rwl_jax.main --config=configs/cifar10_rwl.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.num_epochs=30 --config.data.image_dir=PATH`.
Rerun on a workdir that holds a run, the command continues it; one that changes what is trained
(method, model, data, batch, schedule, epochs) stops with the differences listed, unless given
--accept_config_change.
On a multi-process job add --distributed (cli.run starts JAX's runtime). Bad input ends in one
`error: ...` line and exit status 2.
"""

from absl import flags
from ml_collections import config_flags

from rwl_jax import cli, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_ACCEPT_CONFIG_CHANGE = flags.DEFINE_bool(
    "accept_config_change", False, "Continue the run in --workdir although this command changes "
    "settings that change what is trained (e.g. more epochs); the changes are recorded in "
    "WORKDIR/config_history.jsonl. Without it such a rerun stops and lists the differences.")
flags.mark_flags_as_required(["config", "workdir"])


def main():
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                           accept_config_change=_ACCEPT_CONFIG_CHANGE.value)


if __name__ == "__main__":
  cli.run(main, distributed=True)
