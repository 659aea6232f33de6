"""The notebooks run top to bottom in their small mode, and are stored without outputs.

Each notebook is executed by nbclient in a fresh ``python3`` kernel (the ipykernel of this environment)
with ``LARS_NOTEBOOK_SMALL=1``; any cell error fails the test.
"""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_every_promised_notebook_exists():
  assert [p.name for p in NOTEBOOKS] == [
    "01_quickstart.ipynb",
    "02_large_batch.ipynb",
    "03_imagenet_pmap.ipynb",
  ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_installs_only_in_colab(path):
  notebook = nbformat.read(path, as_version=4)
  setup = next(cell.source for cell in notebook.cells if cell.cell_type == "code")
  assert "import google.colab" in setup and "if IN_COLAB:" in setup
  installs = [line for line in setup.splitlines() if line.lstrip().startswith("!")]
  assert installs and all(line.startswith("  !") for line in installs)  # all inside `if IN_COLAB:`.


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_small_mode(path):
  notebook = nbformat.read(path, as_version=4)
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
