"""The documentation site: its sources cover the public API; its build (when there is one) has the API
entries, the flags of train.py and the notebooks with their outputs.

The source checks always run. The checks of the built site run after ``sphinx-build -W --keep-going docs
docs/_build/html`` (the README's docs command, which ``.ci/run`` runs before ``pytest tests/test_docs.py``)
and are skipped while ``docs/_build/html`` does not exist.
"""

import re
from pathlib import Path

import pytest

import lars_optax
import models

DOCS = Path(__file__).resolve().parents[1] / "docs"
HTML = DOCS / "_build" / "html"
built = pytest.mark.skipif(not (HTML / "index.html").exists(), reason="the docs are not built")


def test_the_api_page_documents_every_public_name_of_lars_optax():
  source = (DOCS / "api" / "lars_optax.md").read_text()
  directive = r"^\.\. auto(?:function|class|data):: lars_optax\.(\w+)$"
  documented = re.findall(directive, source, flags=re.MULTILINE)
  assert sorted(documented) == sorted(lars_optax.__all__)


@built
@pytest.mark.parametrize(
  ("page", "module", "names"),
  [
    ("api/lars_optax.html", "lars_optax", lars_optax.__all__),
    ("_generated/models.html", "models", models.__all__),
  ],
)
def test_built_api_pages_have_an_entry_for_every_public_name(page, module, names):
  ids = set(re.findall(r'<dt class="sig sig-object py" id="([\w.]+)"', (HTML / page).read_text()))
  assert sorted(n for n in names if f"{module}.{n}" not in ids) == []


@built
def test_built_site_has_the_training_entry_point_and_its_flags():
  assert 'id="training.loop.train_and_evaluate"' in (HTML / "api" / "training.html").read_text()
  assert "--workdir" in (HTML / "training.html").read_text()


@built
@pytest.mark.parametrize("stem", ["01_quickstart", "02_large_batch", "03_imagenet_pmap"])
def test_built_notebooks_have_their_outputs(stem):
  page = (HTML / "_generated" / "notebooks" / f"{stem}.html").read_text()
  assert 'class="output' in page and "Traceback" not in page
  if stem == "01_quickstart":
    assert re.search(r'<img[^>]+src="[^"]*_images/[^"]+\.png"', page)


@built
def test_built_results_pages_include_every_result_file():
  for table in (DOCS.parent / "experiments").glob("*/results/*.md"):
    page = HTML / "_generated" / "results" / f"{table.stem}.html"
    assert page.exists(), page
    assert f'href="_generated/results/{table.stem}.html"' in (HTML / "results.html").read_text()
