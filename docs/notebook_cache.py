"""Executed notebooks shared by the test suite and the documentation build, so that CI runs each once.

``tests/test_notebooks.py`` writes each notebook it executed to ``build/executed_notebooks/`` with the hash of
its cell sources in its metadata; ``docs/conf.py`` renders that copy instead of executing the notebook again
when the hash matches and the copy is newer than every Python file of the checkout. Delete the folder (or
set ``LARS_EXECUTED_NOTEBOOKS`` to an empty one) to make the docs build execute them itself.
"""

import hashlib
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXECUTED_DIR = Path(os.environ.get("LARS_EXECUTED_NOTEBOOKS", ROOT / "build" / "executed_notebooks"))
HASH_KEY = "lars_source_hash"
CODE_DIRS = ("lars_optax", "models", "training", "input_pipeline", "benchmarks", "experiments", "configs")


def source_hash(cells: list[dict]) -> str:
  """Hash of the cells' types and sources (outputs and execution counts do not count)."""
  sources = [(cell["cell_type"], "".join(cell["source"])) for cell in cells]
  return hashlib.sha256(json.dumps(sources).encode()).hexdigest()


def executed_copy(source: Path) -> Path | None:
  """The executed copy of ``source`` if it is of the same cells and newer than the code it ran."""
  copy = EXECUTED_DIR / source.name
  if not copy.exists():
    return None
  cells = json.loads(source.read_text())["cells"]
  if json.loads(copy.read_text())["metadata"].get(HASH_KEY) != source_hash(cells):
    return None
  newest_code = max(p.stat().st_mtime for d in CODE_DIRS for p in (ROOT / d).rglob("*.py"))
  return copy if copy.stat().st_mtime > newest_code else None
