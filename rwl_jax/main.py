"""Command line: `python -m rwl_jax.main --config=configs/cifar10_rwl.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.num_epochs=30 --config.data.image_dir=PATH`.
Bad input ends in one `error: ...` line and exit status 2.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from rwl_jax import cli, train
from rwl_jax.errors import ConfigError, RunError
from rwl_jax.metrics import configure_logging

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Start JAX's multi-process runtime (jax.distributed.initialize): on "
    "Cloud TPU and under Slurm it finds its peers itself; elsewhere give the three flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def start_distributed() -> None:
  import jax  # pylint: disable=g-import-not-at-top

  # CPU processes exchange collectives through gloo (tests, CPU clusters); GPUs and TPUs ignore it.
  # Set before initialize: the backends must not have started yet.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  configure_logging()
  if _DISTRIBUTED.value:
    start_distributed()
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, RunError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  cli.run(main)
