"""The `rwl-jax` command and packaged configs: found by name from any directory, one error line."""

import os
import subprocess
import sys

import pytest

from conftest import REPO
from rwl_jax import cli
from rwl_jax.configs import cifar10_rwl, cifar10_simsiam, common
from rwl_jax.errors import ConfigError


def test_packaged_configs_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  packaged = str(cli.CONFIG_DIR / "cifar10_rwl.py")
  assert cli.resolve_config("cifar10_rwl") == packaged
  assert cli.resolve_config("cifar10_rwl.py:smoke") == packaged + ":smoke"
  assert cli.resolve_config("configs/cifar10_rwl.py") == packaged  # README's command, elsewhere
  # A file that exists is used as given; anything else is left for the loader to report.
  (tmp_path / "cifar10_rwl.py").write_text("")
  assert cli.resolve_config("cifar10_rwl.py") == "cifar10_rwl.py"
  assert cli.resolve_config("elsewhere/cifar10_rwl.py") == "elsewhere/cifar10_rwl.py"
  assert cli.resolve_config("cifar10_nope") == "cifar10_nope"
  assert cli.resolve_config_argv(["x", "--config", "cifar10_simclr", "--config.seed=1"]) == [
      "x", "--config", str(cli.CONFIG_DIR / "cifar10_simclr.py"), "--config.seed=1"]
  assert set(cli.packaged_configs()) >= {"cifar10_rwl", "cifar10_simclr", "cifar10_byol_gsg"}


def test_repository_configs_are_the_packaged_ones():
  assert (REPO / "configs" / "cifar10_rwl.py").resolve() == cli.CONFIG_DIR / "cifar10_rwl.py"


def test_smoke_variant_overrides_the_method_and_unknown_variants_fail():
  smoke = cifar10_simsiam.get_config("smoke")
  assert smoke.method == "simsiam" and smoke.global_batch_size == 64 and smoke.num_epochs == 2
  assert smoke.model.projector_dims == (2048, 2048)  # the method's own settings stay
  assert cifar10_rwl.get_config() == common.get_config()
  with pytest.raises(ValueError, match="unknown config variant 'tiny'; known variants: smoke"):
    cifar10_rwl.get_config("tiny")


@pytest.mark.parametrize("argv, status, said", [
    (["fit"], 2, "error: unknown command 'fit'; usage: rwl-jax "
                 "{train|evaluate|benchmark|memory|report|export}"),
    ([], 2, "error: no command; usage: rwl-jax"),
    (["--help"], 0, "usage: rwl-jax {train|evaluate|benchmark|memory|report|export}"),
    # export defines its flags only when run (importing it for load_encoder defines none).
    (["export", "--workdir=no_such_run"], 2,
     "error: "),
])
def test_rwl_jax_command_line(argv, status, said, tmp_path):
  done = subprocess.run([sys.executable, "-c", "from rwl_jax import cli; cli.main()", *argv],
                        cwd=tmp_path, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == status
  output = (done.stderr if status else done.stdout).strip()
  assert output.startswith(said) and len(output.splitlines()) == 1 and "Traceback" not in done.stderr
  if argv[:1] == ["export"]:
    assert output.endswith("no_such_run/config.json not found: --workdir must be a directory a "
                           "training run wrote")


def test_unsupported_workdir_is_one_error_line(tmp_path):
  done = subprocess.run([sys.executable, "-m", "rwl_jax.main", "--config=cifar10_rwl:smoke",
                         "--workdir=ram://x/run"], cwd=tmp_path, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 2 and "Traceback" not in done.stderr
  assert done.stderr.strip().splitlines()[-1] == (
      "error: --workdir 'ram://x/run': unsupported URL scheme 'ram://'; use a local path or "
      "gs://, s3://, az://, hf://")


def test_config_file_from_a_bucket(tmp_path):
  from local_bucket import local_bucket  # pylint: disable=g-import-not-at-top

  (tmp_path / "lab").mkdir()
  (tmp_path / "lab" / "mine.py").write_text("from rwl_jax.configs.cifar10_simclr import get_config\n")
  with local_bucket(str(tmp_path)):
    resolved = cli.resolve_config("gs://lab/mine.py:smoke")
    with pytest.raises(ConfigError, match=r"--config 'gs://lab/absent.py' cannot be read"):
      cli.resolve_config("gs://lab/absent.py")
  local, arg = resolved.rsplit(":", 1)
  assert arg == "smoke" and local.endswith("mine.py") and not local.startswith(str(tmp_path))
  assert "cifar10_simclr" in open(local).read()


@pytest.mark.parametrize("flags, said", [
    (["--config.no_such_field=1"], "error: a --config override names a field the config does not "
                                   "have: no_such_field; given: --config.no_such_field=1"),
    (["--config.modle.width=8"], "error: a --config override names a field the config does not "
                                 "have: modle (Did you mean \"model\" instead of \"modle\"?)"),
    (["--config.num_epochs=abc"], "error: flag --config.num_epochs=abc: invalid literal for int()"),
    (["--bogus=1"], "error: Unknown command line flag 'bogus'"),
])
def test_command_line_mistakes_are_one_error_line(flags, said, tmp_path):
  done = subprocess.run([sys.executable, "-m", "rwl_jax.main", "--config=cifar10_rwl",
                         f"--workdir={tmp_path / 'run'}", *flags], cwd=tmp_path,
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert done.returncode == 2 and "Traceback" not in done.stderr
  assert len(lines) == 1 and lines[0].startswith(said), done.stderr[-2000:]
  assert not (tmp_path / "run").exists()  # nothing started


@pytest.mark.parametrize("config, said", [
    ("nope.py", "error: --config=nope.py cannot be loaded: [Errno 2] No such file or directory"),
    ("cifar10_rwl:tiny", "unknown config variant 'tiny'; known variants: smoke"),
])
def test_config_that_cannot_be_loaded_is_one_error_line(config, said, tmp_path):
  done = subprocess.run([sys.executable, "-m", "rwl_jax.main", f"--config={config}",
                         f"--workdir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 2 and "Traceback" not in done.stderr
  assert said in done.stderr.strip().splitlines()[-1]
