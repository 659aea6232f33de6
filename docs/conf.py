"""Sphinx configuration of the lars_optax documentation (build: see docs/development.md).

Pages that must follow files of the checkout are generated here, before Sphinx reads its sources, into
``docs/_generated/`` (ignored by git): the notebooks (copied from ``notebooks/``, executed by myst-nb in
their small mode unless the test suite already executed the same source, see ``tests/test_notebooks.py``),
one page per ``experiments/*/results/*.md``, one entry per ``configs/*.py``, and ``python train.py --help``.
"""

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
GENERATED = DOCS / "_generated"
sys.path.insert(0, str(ROOT))  # lars_optax, models, training, configs from the checkout.
# The notebooks' small mode (seconds per cell); the kernels myst-nb starts inherit this environment.
os.environ["LARS_NOTEBOOK_SMALL"] = "1"

import lars_optax  # noqa: E402

sys.path.insert(0, str(DOCS))
import notebook_cache  # noqa: E402

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
URLS = PYPROJECT["project"]["urls"]

project = "lars_optax"
author = "lars_optax developers"
copyright = "lars_optax developers"
release = version = lars_optax.__version__

extensions = [
  "myst_nb",
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# Docstrings: Google style (Args/Returns/Raises/Example). Signatures keep the source's annotations.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
# Type aliases by name in signatures (the library's modules use postponed annotations), not expanded unions;
# none inside a union ("X | None"), which Sphinx would print as a forward reference.
autodoc_type_aliases = {
  "ArrayLike": "jax.typing.ArrayLike",
  "optax.ScalarOrSchedule": "optax.ScalarOrSchedule",
  "optax.Schedule": "optax.Schedule",
  "optax.Params": "optax.Params",
  "optax.Updates": "optax.Updates",
  "Mask": "Mask",
  "_masks.Mask": "Mask",
  "LayerAxes": "LayerAxes",
  "_masks.LayerAxes": "LayerAxes",
  "MaybeAxisName": "AxisName | None",
  "_trust_ratio.MaybeAxisName": "AxisName | None",
  "MaybeSchedule": "ScalarOrSchedule | None",
  "TrustRatioNorm": "TrustRatioNorm",
  "_trust_ratio.TrustRatioNorm": "TrustRatioNorm",
  "LearningRatePlacement": "LearningRatePlacement",
}
autodoc_member_order = "bysource"
autodoc_default_options = {"exclude-members": "_asdict, _fields, _field_defaults, _make, _replace"}
# Type names in annotations that Sphinx cannot resolve to a page of this site are printed, not linked.
nitpicky = False

# Notebooks: executed at build time unless their outputs are already there (see _copy_notebooks).
nb_execution_mode = "auto"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

html_theme = "sphinx_book_theme"
html_title = f"lars_optax {version}"
html_theme_options = {
  "repository_url": URLS["Source"],
  "use_repository_button": True,
  "use_issues_button": True,
  "path_to_docs": "docs",
  "show_toc_level": 2,
}


def _copy_notebooks() -> None:
  """Copies notebooks/*.ipynb, or the test suite's executed copy of the same cells (see notebook_cache)."""
  target = GENERATED / "notebooks"
  target.mkdir(parents=True, exist_ok=True)
  for source in sorted((ROOT / "notebooks").glob("*.ipynb")):
    executed = notebook_cache.executed_copy(source)
    notebook = json.loads((executed or source).read_text())
    notebook["metadata"]["mystnb"] = {"execution_mode": "off" if executed else "force"}
    (target / source.name).write_text(json.dumps(notebook, ensure_ascii=False))


def _results_pages() -> None:
  """One page per experiments/*/results/*.md, with the plots of the same stem after the tables."""
  target = GENERATED / "results"
  shutil.rmtree(target, ignore_errors=True)
  target.mkdir(parents=True)
  for table in sorted((ROOT / "experiments").glob("*/results/*.md")):
    results = table.parent
    rel = os.path.relpath(results, target)
    lines = [f"# {table.stem}", "", f"```{{include}} {rel}/{table.name}", "```", ""]
    for plot in sorted(results.glob(f"{table.stem}*.png")):
      lines += [f"```{{image}} {rel}/{plot.name}", f":alt: {plot.stem}", "```", ""]
    (target / table.name).write_text("\n".join(lines))


def _configs_page() -> None:
  """The docstring of every configs/*.py (command, hardware, expected time and top-1), as written."""
  lines = ["# Configs", "", "Each file of `configs/` defines `get_config()`, its docstring how to run it."]
  lines.append("")
  for path in sorted((ROOT / "configs").glob("*.py")):
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    if path.stem.startswith("_") or not docstring:
      continue
    lines += [f"## `configs/{path.name}`", "", "```text", docstring, "```", ""]
  (GENERATED / "configs.md").write_text("\n".join(lines))


def _train_help() -> None:
  """``python train.py --help``, the reference of train.py's flags."""
  result = subprocess.run(
    [sys.executable, str(ROOT / "train.py"), "--help"],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
    timeout=300,
    check=False,
  )
  if "--config" not in result.stdout:  # absl's --help exits 1 in some versions: judge by what it printed.
    raise RuntimeError(f"python train.py --help failed:\n{result.stdout}\n{result.stderr}")
  (GENERATED / "train_help.txt").write_text(result.stdout.replace(str(ROOT) + os.sep, ""))


def _models_page() -> None:
  """Every name of ``models.__all__``: classes by autodoc, the partials of one builder by their arguments."""
  import functools

  import models

  lines = ["# `models`", "", "```{eval-rst}", ".. automodule:: models", ""]
  lines += [".. autofunction:: models.get_model", ""]
  lines += [".. autodata:: models.MODELS", "   :no-value:", "```", "", "## Modules", ""]
  lines += ["Flax Linen modules; their fields are the constructor's keyword arguments.", "", "```{eval-rst}"]
  partials = []
  for name in models.__all__:
    value = getattr(models, name)
    if isinstance(value, functools.partial):
      partials.append((name, value))
    elif isinstance(value, type):
      lines += [f".. autoclass:: models.{name}", ""]
  lines += ["```", "", "## Variants", "", "Partials of the modules above, as `get_model` builds them.", ""]
  lines += ["```{eval-rst}", ".. py:currentmodule:: models", ""]
  for name, value in partials:
    keywords = value.keywords.items()
    arguments = ", ".join(f"{key}={getattr(v, '__name__', None) or repr(v)}" for key, v in keywords)
    lines += [f".. py:data:: {name}", "", f"   ``functools.partial({value.func.__name__}, {arguments})``", ""]
  lines += ["```", ""]
  (GENERATED / "models.md").write_text("\n".join(lines))


GENERATED.mkdir(exist_ok=True)
_models_page()
_copy_notebooks()
_results_pages()
_configs_page()
_train_help()
