"""The notebooks run top to bottom in their small mode, are stored without outputs, and open in Colab.

Each notebook is executed by nbclient in a fresh ``python3`` kernel (the ipykernel of this environment)
with ``LARS_NOTEBOOK_SMALL=1``; any cell error fails the test. The executed copy is kept in
``build/executed_notebooks/`` for the documentation build (``docs/notebook_cache.py``).

The first code cell is plain Python (no ``!`` or ``%`` magics), so that it can run here outside Colab with
the network blocked; in Colab it checks that its ``REPO_URL`` (``pyproject.toml``'s ``[project.urls] Source``)
is reachable before cloning it.
"""

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCE_URL = PYPROJECT["project"]["urls"]["Source"]
CHECKOUT_PACKAGES = (
  "lars_optax",
  "models",
  "training",
  "input_pipeline",
  "benchmarks",
  "experiments",
  "configs",
)

_spec = importlib.util.spec_from_file_location("notebook_cache", ROOT / "docs" / "notebook_cache.py")
notebook_cache = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebook_cache)


def first_code_cell(path: Path) -> str:
  notebook = nbformat.read(path, as_version=4)
  return next(cell.source for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_colab_badge_opens_this_notebook_of_the_source_repository(path):
  badge = f"https://colab.research.google.com/github/{SOURCE_URL.removeprefix('https://github.com/')}"
  assert re.findall(r"https://colab\.research\.google\.com/github/[^)\s\"]*", path.read_text()) == [
    f"{badge}/blob/main/notebooks/{path.name}"
  ]


def _needs(path: Path) -> list[str]:
  """The packages the notebook's first cell installs in Colab (its ``NEEDS`` list)."""
  assignments = [node for node in ast.parse(first_code_cell(path)).body if isinstance(node, ast.Assign)]
  return next(ast.literal_eval(n.value) for n in assignments if getattr(n.targets[0], "id", "") == "NEEDS")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_what_colab_installs_is_pinned_by_the_train_or_tfds_extra(path):
  extras = PYPROJECT["project"]["optional-dependencies"]
  pinned = {canonicalize_name(Requirement(r).name) for r in extras["train"] + extras["tfds"]}
  assert _needs(path) and {canonicalize_name(n) for n in _needs(path)} <= pinned


# Runs the first cell as a script: every socket refuses to connect and resolve, git is a stub that records
# its calls and answers like an unreachable server, and, when asked, a stub `google.colab` makes it take
# the Colab branch.
_RUNNER = textwrap.dedent(
  """
  import socket, sys, types

  def refuse(*args, **kwargs):
    raise OSError("network access attempted")

  socket.socket.connect = socket.socket.connect_ex = refuse
  socket.create_connection = socket.getaddrinfo = refuse
  if sys.argv[2] == "colab":
    sys.modules["google"] = types.ModuleType("google")
    sys.modules["google.colab"] = sys.modules["google"].colab = types.ModuleType("google.colab")
  exec(compile(open(sys.argv[1]).read(), "first cell", "exec"), {"__name__": "__main__"})
  """
)
_GIT_STUB = '#!/bin/sh\necho "git $*" >> "$GIT_CALLS"\necho "fatal: unable to access it" >&2\nexit 128\n'


def _run_first_cell(path: Path, tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess, str]:
  (tmp_path / "cell.py").write_text(first_code_cell(path))
  (tmp_path / "runner.py").write_text(_RUNNER)
  (tmp_path / "bin").mkdir(exist_ok=True)
  (tmp_path / "bin" / "git").write_text(_GIT_STUB)
  (tmp_path / "bin" / "git").chmod(0o755)
  calls = tmp_path / "git_calls.txt"
  env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "GIT_CALLS": str(calls)}
  result = subprocess.run(
    [sys.executable, str(tmp_path / "runner.py"), str(tmp_path / "cell.py"), mode],
    cwd=NOTEBOOK_DIR,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  return result, calls.read_text() if calls.exists() else ""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_outside_colab_makes_no_network_access(path, tmp_path):
  result, git_calls = _run_first_cell(path, tmp_path, "local")
  assert result.returncode == 0, result.stderr
  assert "Colab: False" in result.stdout and f"repository: {ROOT}" in result.stdout
  assert git_calls == ""


@pytest.mark.skipif(Path("/content/lars_optax").exists(), reason="a Colab checkout is there")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_in_colab_stops_with_a_clear_message_when_the_repository_is_unreachable(path, tmp_path):
  result, git_calls = _run_first_cell(path, tmp_path, "colab")
  assert result.returncode != 0
  assert f"Cannot reach the repository REPO_URL = '{SOURCE_URL}'" in result.stderr
  assert "Set REPO_URL in this cell's form" in result.stderr
  assert git_calls.splitlines() == [f"git ls-remote --exit-code {SOURCE_URL} HEAD"]  # checked, never cloned.


# The last cell the test appends: the top-level modules the kernel loaded, and the files of the checkout's
# modules among them.
_LIST_MODULES = "\n".join(
  [
    "import json, sys",
    f"checkout = {CHECKOUT_PACKAGES!r}",
    "mods = list(sys.modules.items())",
    "files = {getattr(m, '__file__', None) or '' for n, m in mods if n.split('.')[0] in checkout}",
    "print(json.dumps({'loaded': sorted({n.split('.')[0] for n in sys.modules}), 'files': sorted(files)}))",
  ]
)
# Colab's own packages that a notebook uses without installing them: TensorFlow (here its CPU build).
_COLAB_PROVIDES = {"03_imagenet_pmap": ["tensorflow-cpu"]}


def _imported_names(sources: list[str]) -> set[str]:
  """Top-level names of the modules that ``sources`` import (absolute imports)."""
  names = set()
  for source in sources:
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, ast.Import):
        names |= {alias.name.split(".")[0] for alias in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names.add(node.module.split(".")[0])
  return names


def _requirement_closure(names) -> set[str]:
  """The distributions ``names`` pull in, by the installed distributions' requirements (extras left out)."""
  todo, seen = [canonicalize_name(n) for n in names], set()
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    try:
      requirements = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
      continue
    for text in requirements:
      requirement = Requirement(text)
      if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
        todo.append(canonicalize_name(requirement.name))
  return seen


def _distributions_outside(modules: list[str], allowed: set[str]) -> set[str]:
  """Installed distributions of ``modules`` of which none is in ``allowed`` (stdlib modules have none)."""
  owners = importlib.metadata.packages_distributions()
  outside = set()
  for module in modules:
    dists = {canonicalize_name(d) for d in owners.get(module, [])}
    if dists and not dists & allowed:
      outside |= dists
  return outside


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_small_mode_with_only_what_its_first_cell_installs(path):
  notebook = nbformat.read(path, as_version=4)
  notebook.cells.append(nbformat.v4.new_code_cell(_LIST_MODULES))
  env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
  env["LARS_NOTEBOOK_SMALL"] = "1"
  client = NotebookClient(
    notebook,
    timeout=480,
    kernel_name="python3",
    resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
  )
  client.execute(env=env)  # raises CellExecutionError, with the traceback, on any cell error.
  errors = [
    output
    for cell in notebook.cells
    if cell.cell_type == "code"
    for output in cell.outputs
    if output.output_type == "error"
  ]
  assert not errors
  report = json.loads(notebook.cells.pop().outputs[0]["text"])
  cells = [cell.source for cell in notebook.cells if cell.cell_type == "code"][1:]  # after the first.
  sources = cells + [Path(f).read_text() for f in report["files"] if f.endswith(".py")]
  # Third-party modules that the project's code imports and the run loaded (not what libraries try).
  modules = sorted(_imported_names(sources) & set(report["loaded"]) - set(CHECKOUT_PACKAGES))
  colab = [*_COLAB_PROVIDES.get(path.stem, []), "ipykernel"]
  allowed = _requirement_closure([PYPROJECT["project"]["name"], *_needs(path), *colab])
  assert _distributions_outside(modules, allowed) == set()
  notebook.metadata[notebook_cache.HASH_KEY] = notebook_cache.source_hash(notebook.cells)
  notebook_cache.EXECUTED_DIR.mkdir(parents=True, exist_ok=True)
  nbformat.write(notebook, notebook_cache.EXECUTED_DIR / path.name)
