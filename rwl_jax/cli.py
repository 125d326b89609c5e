"""The `rwl-jax` command and what every command-line module shares: packaged configs by name, and
flags parsed up front so that any mistake in them is one `error:` line (exit status 2).

  rwl-jax train --config=cifar10_rwl --workdir=runs/rwl          # = python -m rwl_jax.main ...
  rwl-jax evaluate --workdir=runs/rwl                            # = python -m rwl_jax.evaluate ...
  rwl-jax benchmark|memory|report|export ...

`--config` takes a config file (FILE.py, optionally FILE.py:ARG for get_config(ARG)) or the name
of a config shipped in rwl_jax/configs (`cifar10_rwl`, `cifar10_rwl.py`, or the repository path
`configs/cifar10_rwl.py` when no such file exists where the command runs), so an installed package
trains from any directory. A config file may also be a URL (gs://...): it is copied to a local
temporary file first, since the config loader reads local files only.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import sys
import tempfile
from typing import Callable, Sequence

from rwl_jax import paths
from rwl_jax.errors import ConfigError, RunError

COMMANDS = {
    "train": "rwl_jax.main",
    "evaluate": "rwl_jax.evaluate.__main__",
    "benchmark": "rwl_jax.benchmark",
    "memory": "rwl_jax.memory",
    "report": "rwl_jax.report",
    "export": "rwl_jax.export",
}
# The commands that run on every process of a multi-process job (they take --distributed).
DISTRIBUTED_COMMANDS = ("train", "evaluate", "benchmark")
CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list[str]:
  return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common"))


def resolve_config(value: str) -> str:
  """FILE[:ARG] as given when FILE exists, else the packaged config of that name (same ARG).

  Only a bare name, NAME.py or configs/NAME.py falls back to the package: a path to anything else
  that does not exist is left for the config loader to report.
  """
  if paths.url_scheme(value):
    location, colon, arg = value.rpartition(":") if value.count(":") > 1 else (value, "", "")
    remote = paths.as_path(location, "--config")
    local = pathlib.Path(tempfile.mkdtemp(prefix="rwl_jax_config_")) / remote.name
    try:
      local.write_bytes(remote.read_bytes())
    except OSError as error:
      raise ConfigError(f"--config {os.fspath(remote)!r} cannot be read: {error}") from error
    return f"{local}{colon}{arg}"
  path, colon, arg = value.partition(":")
  if os.path.exists(path):
    return value
  candidate = pathlib.PurePath(path)
  in_configs_dir = len(candidate.parts) == 1 or (
      len(candidate.parts) == 2 and candidate.parts[0] == "configs")
  name = candidate.stem if candidate.suffix in ("", ".py") else ""
  if in_configs_dir and name in packaged_configs():
    return f"{CONFIG_DIR / name}.py{colon}{arg}"
  return value


def resolve_config_argv(argv: Sequence[str]) -> list[str]:
  """argv with every --config=VALUE / --config VALUE resolved by resolve_config."""
  resolved, argv = [], list(argv)
  index = 0
  while index < len(argv):
    arg = argv[index]
    if arg.startswith("--config="):
      arg = "--config=" + resolve_config(arg[len("--config="):])
    elif arg == "--config" and index + 1 < len(argv):
      resolved.append(arg)
      index += 1
      arg = resolve_config(argv[index])
    resolved.append(arg)
    index += 1
  return resolved


def run(main: Callable[[], None], argv: Sequence[str] | None = None, *,
        distributed: bool = False) -> None:
  """The one harness of every command-line tool: packaged configs resolved, flags parsed up front,
  INFO logging, JAX's multi-process runtime started on --distributed (when the tool takes it),
  and any ConfigError or RunError, from the flags or from main(), one `error:` line with exit
  status 2. main takes no arguments: the tools take flags only, and a stray positional argument
  is an error here."""
  from absl import app  # pylint: disable=g-import-not-at-top

  app.define_help_flags()  # --help/--helpfull exist before the flags are parsed below
  if distributed:
    _define_distributed_flags()
  try:
    argv = resolve_config_argv(sys.argv if argv is None else argv)
    arguments = _parse_flags(argv)
    if len(arguments) > 1:
      raise ConfigError(f"unexpected arguments: {' '.join(arguments[1:])}; every input is a "
                        "--flag (`--help` lists them)")
  except ConfigError as error:
    _fail(error)

  def harnessed(_):
    from rwl_jax.run.metrics import configure_logging  # pylint: disable=g-import-not-at-top

    configure_logging()
    try:
      if distributed:
        _start_distributed()
      main()
    except (ConfigError, RunError) as error:
      _fail(error)
    except KeyboardInterrupt:  # Ctrl-C outside the train loop (which saves and says so itself)
      _fail("interrupted")
    except OSError as error:  # a disk that fills up, a folder that vanishes, a lost mount
      where = f" ({error.filename})" if getattr(error, "filename", None) else ""
      _fail(f"{error.strerror or error}{where}; the newest checkpoint, if any, is intact (a "
            "checkpoint becomes one only once completely written)")

  # Parsed already: a second parse would define ml_collections' --config.FIELD flags twice.
  app.run(harnessed, argv=argv, flags_parser=lambda _: arguments)


def _fail(error: Exception) -> None:
  print(f"error: {error}", file=sys.stderr)
  sys.exit(2)


def _define_distributed_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top

  if "distributed" in flags.FLAGS:
    return
  flags.DEFINE_bool(
      "distributed", False, "Start JAX's multi-process runtime (jax.distributed.initialize): on "
      "Cloud TPU and under Slurm it finds its peers itself; elsewhere give the three flags below.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Number of processes.")
  flags.DEFINE_integer("process_id", None, "This process's index.")


def _start_distributed() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  values = flags.FLAGS
  if not values.distributed:
    return
  # CPU processes exchange collectives through gloo (tests, CPU clusters); GPUs and TPUs ignore
  # it. Set before initialize: the backends must not have started yet.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=values.coordinator_address,
                               num_processes=values.num_processes, process_id=values.process_id)
  except (RuntimeError, ValueError) as error:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raise ConfigError(f"--distributed: JAX's multi-process runtime did not start: "
                      f"{lines[0] if lines else type(error).__name__}") from None


def _parse_flags(argv: list[str]) -> list[str]:
  """Parses the flags (returning the other arguments) so that a mistake is one ConfigError line,
  not absl's usage dump or a traceback from inside ml_collections, whose overrides raise
  AttributeError and the like."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  try:
    arguments = flags.FLAGS(argv)
  except flags.Error as error:  # unknown flag, bad value, a required flag missing
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # A config file that raised: the first line says where, the last one what.
    said = lines[0] if len(lines) < 2 else f"{lines[0].rstrip(':')}: {lines[-1]}"
    raise ConfigError(said) from None
  except SyntaxError as error:  # a config file that does not parse (raised while loading it)
    raise ConfigError(f"--config={error.filename} cannot be loaded: {error.msg} (line "
                      f"{error.lineno})") from None
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    overrides = " ".join(arg for arg in argv if arg.startswith("--config."))
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(error, (AttributeError, KeyError)) and lines:
      hint = f" ({'; '.join(lines[1:])})" if len(lines) > 1 else ""
      raise ConfigError(f"a --config override names a field the config does not have: "
                        f"{lines[0].strip(chr(39) + chr(34))}{hint}; given: {overrides}") from None
    raise ConfigError(f"a --config override does not fit the config ({'; '.join(lines)}); given: "
                      f"{overrides or '(none)'}") from None
  except Exception as error:  # pylint: disable=broad-except  # what a config's get_config raised
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raise ConfigError(f"--config={_given_config(argv)} cannot be loaded: get_config raised "
                      f"{type(error).__name__}: {lines[0] if lines else ''}") from None
  try:
    if "config" in flags.FLAGS and flags.FLAGS["config"].present:
      flags.FLAGS["config"].value.keys()  # ml_collections defers a failed load to the first use
  except Exception as error:  # pylint: disable=broad-except  # whatever the config file raised
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raise ConfigError(f"--config={flags.FLAGS['config'].serialize().split('=', 1)[-1]} cannot be "
                      f"loaded: {lines[-1] if lines else type(error).__name__}; packaged configs: "
                      f"{', '.join(packaged_configs())}") from None
  return arguments


def _given_config(argv: Sequence[str]) -> str:
  for index, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg[len("--config="):]
    if arg == "--config" and index + 1 < len(argv):
      return argv[index + 1]
  return "?"


def main() -> None:
  """`rwl-jax COMMAND [FLAGS]`: runs that command's module, as `python -m MODULE [FLAGS]` would."""
  usage = (f"usage: rwl-jax {{{'|'.join(COMMANDS)}}} [--flags]; `rwl-jax COMMAND --help` lists "
           f"a command's flags; packaged configs: {', '.join(packaged_configs())}")
  if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help", "help"):
    print(usage)
    return
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    given = f"unknown command {sys.argv[1]!r}; " if len(sys.argv) > 1 else "no command; "
    print(f"error: {given}{usage}", file=sys.stderr)
    sys.exit(2)
  command = sys.argv[1]
  # Importing only the chosen module keeps each command's flags to itself.
  module = importlib.import_module(COMMANDS[command])
  entry = module.main
  if hasattr(module, "define_flags"):  # a module importable as a library defines them on demand
    defined = module.define_flags()
    entry = lambda: module.main(defined)  # pylint: disable=unnecessary-lambda-assignment
  run(entry, [f"rwl-jax {command}", *sys.argv[2:]], distributed=command in DISTRIBUTED_COMMANDS)
