"""What the package declares: floors equal to the pins CI tests them at, and the files users look for."""

import configparser
import re

from conftest import REPO, declared_minimums


def _floors_in_setup_cfg() -> dict[str, str]:
  setup = configparser.ConfigParser()
  setup.read(REPO / "setup.cfg")
  floors = {}
  for line in setup["options"]["install_requires"].splitlines():
    match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([^;,\s]+)", line.split("#")[0].strip())
    if match:
      floors[match.group(1).lower()] = match.group(3)
  return floors


def test_every_declared_floor_is_the_version_ci_tests():
  floors, pins = _floors_in_setup_cfg(), declared_minimums()
  assert {"jax", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets"} <= set(floors)
  assert {name: floors[name] for name in floors} == {name: pins[name] for name in floors}, \
      "raise a floor in setup.cfg and its pin in .ci/minimum-versions.txt together"


def test_license_typing_marker_and_contributing_guide():
  setup = configparser.ConfigParser()
  setup.read(REPO / "setup.cfg")
  assert setup["metadata"]["license"] == "Apache-2.0"
  assert "Apache License" in (REPO / "LICENSE").read_text().splitlines()[1]
  assert (REPO / "rwl_jax" / "py.typed").exists() and "py.typed" in setup["options.package_data"]["rwl_jax"]
  assert 'pytest -q -n auto -m "not slow" tests' in (REPO / "CONTRIBUTING.md").read_text()


def test_ci_runs_the_test_commands_readme_gives():
  readme_commands = set(re.findall(r"^(python -m pytest .*?tests)\b", (REPO / "README.md").read_text(),
                                   re.MULTILINE))
  ci_commands = set(re.findall(r"^(python -m pytest .*)$", (REPO / ".ci" / "run").read_text(),
                               re.MULTILINE))
  assert len(readme_commands) == 2 and ci_commands == readme_commands
