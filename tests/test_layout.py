"""The package's shape, read from its source: imports run down the layers only, no module uses
another's private names, there are no import cycles, and the top level holds only the entry
points and the shared basics."""

from __future__ import annotations

import ast
import pathlib

import pytest

from conftest import REPO

PACKAGE = REPO / "rwl_jax"

# Lowest first. A module may import from its own layer or a lower one, never a higher one.
LAYERS = (
    ("basics", ("rwl_jax.errors", "rwl_jax.paths", "rwl_jax.tables", "rwl_jax.rng",
                "rwl_jax.parallel")),
    ("leaves", ("rwl_jax.configs", "rwl_jax.losses", "rwl_jax.theory", "rwl_jax.models",
                "rwl_jax.data", "rwl_jax.methods", "rwl_jax.diagnostics", "rwl_jax.online_probe",
                "rwl_jax.optimizer", "rwl_jax.compilation", "rwl_jax.evaluate")),
    ("run", ("rwl_jax.run",)),
    ("orchestration", ("rwl_jax.train", "rwl_jax.evaluate.run", "rwl_jax.tools")),
    ("commands", ("rwl_jax.main", "rwl_jax.cli", "rwl_jax.evaluate.__main__", "rwl_jax.benchmark",
                  "rwl_jax.memory", "rwl_jax.report", "rwl_jax.export", "rwl_jax.profile_summary",
                  "rwl_jax")),
)
TOP_LEVEL = {"__init__", "main", "cli", "train", "errors", "paths", "tables", "rng", "parallel",
             "diagnostics", "online_probe", "optimizer", "compilation",
             # `python -m rwl_jax.NAME` entry points of the tools in rwl_jax/tools
             "benchmark", "memory", "report", "export", "profile_summary"}


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
  """The layer of the longest prefix that names one (evaluate.run is above evaluate)."""
  best, best_length = None, -1
  for index, (_, prefixes) in enumerate(LAYERS):
    for prefix in prefixes:
      if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
        best, best_length = index, len(prefix)
  assert best is not None, f"{module} is in no layer of {__file__}: add it"
  return best


def imports_of(module: str) -> list[tuple[str, list[str], int, bool]]:
  """(imported rwl_jax module, names taken from it, line, at the top of the module) for every
  import, lazy ones inside functions included."""
  tree = ast.parse(MODULES[module].read_text())
  top = {id(node) for node in tree.body}
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rwl_jax"):
      for alias in node.names:
        submodule = f"{node.module}.{alias.name}"
        if submodule in MODULES:  # `from rwl_jax.run import hooks`: the module itself
          found.append((submodule, [], node.lineno, id(node) in top))
        else:
          found.append((node.module, [alias.name], node.lineno, id(node) in top))
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.startswith("rwl_jax"):
          found.append((alias.name, [], node.lineno, id(node) in top))
  return found


def test_every_module_is_in_a_layer_and_the_top_level_is_small():
  for module in MODULES:
    layer_of(module)
  top_level = {path.stem for path in PACKAGE.glob("*.py")}
  assert top_level == TOP_LEVEL, sorted(top_level ^ TOP_LEVEL)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_and_take_no_private_names(module):
  for target, names, line, _ in imports_of(module):
    assert layer_of(target) <= layer_of(module), (
        f"{module}:{line} imports {target} ({LAYERS[layer_of(target)][0]}) from the lower layer "
        f"{LAYERS[layer_of(module)][0]}")
    private = [name for name in names if name.startswith("_") and name != "__version__"]
    assert not private, f"{module}:{line} imports private {private} from {target}"


def test_no_module_reads_another_modules_private_attributes():
  for module, path in MODULES.items():
    tree = ast.parse(path.read_text())
    aliases = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rwl_jax"):
        aliases |= {alias.asname or alias.name for alias in node.names
                    if f"{node.module}.{alias.name}" in MODULES}
      elif isinstance(node, ast.Import):
        aliases |= {alias.asname or alias.name.split(".")[0] for alias in node.names
                    if alias.name.startswith("rwl_jax")}
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in aliases and node.attr.startswith("_")
          and not node.attr.startswith("__")):
        raise AssertionError(f"{module}:{node.lineno} reads {node.value.id}.{node.attr}")


def test_no_import_cycles_at_import_time():
  graph = {module: {target for target, _, _, top in imports_of(module)
                    if top and target in MODULES and target != module}
           for module in MODULES}
  done, path = set(), []

  def visit(module):
    if module in path:
      cycle = path[path.index(module):] + [module]
      raise AssertionError("import cycle: " + " -> ".join(cycle))
    if module in done:
      return
    path.append(module)
    for target in graph[module]:
      visit(target)
    path.pop()
    done.add(module)

  for module in graph:
    visit(module)


def test_the_checks_catch_what_they_look_for():
  # A made-up upward import: run/ is above the leaves, so a model importing the loop is refused.
  assert layer_of("rwl_jax.run.loop") > layer_of("rwl_jax.models.resnet")
  assert layer_of("rwl_jax.evaluate.run") > layer_of("rwl_jax.run.experiment") > layer_of(
      "rwl_jax.evaluate.evaluators")
  with pytest.raises(AssertionError, match="in no layer"):
    layer_of("other_package.module")
