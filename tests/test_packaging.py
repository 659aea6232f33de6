"""The distribution: metadata, license and typing marker; the wheel and sdist that ``python -m build`` makes.

The wheel checks run on ``dist/`` after ``python -m build`` (``.ci/run`` runs it, then ``twine check dist/*``,
then ``pytest tests/test_packaging.py``) and are skipped while there is no wheel of this version there.
"""

import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import lars_optax

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
WHEEL = ROOT / "dist" / f"lars_optax-{PROJECT['version']}-py3-none-any.whl"
SDIST = ROOT / "dist" / f"lars_optax-{PROJECT['version']}.tar.gz"
built = pytest.mark.skipif(not WHEEL.exists(), reason="no wheel in dist/ (run python -m build)")


def test_version_is_one():
  assert lars_optax.__version__ == PROJECT["version"]
  changelog = (ROOT / "CHANGELOG.md").read_text()
  assert f"## {PROJECT['version']}" in changelog


def test_metadata_names_the_license_and_the_project_urls():
  assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
  assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
  assert {"Homepage", "Documentation", "Source", "Issues"} <= set(PROJECT["urls"])
  assert (ROOT / "lars_optax" / "py.typed").exists()


def test_chex_is_a_dependency_only_if_the_library_imports_it():
  imports_chex = any("import chex" in p.read_text() for p in (ROOT / "lars_optax").glob("*.py"))
  required = any(r.startswith("chex") for r in PROJECT["dependencies"])
  assert imports_chex == required


@built
def test_wheel_ships_the_library_license_and_typing_marker_only():
  names = zipfile.ZipFile(WHEEL).namelist()
  assert "lars_optax/py.typed" in names and "lars_optax/__init__.py" in names
  assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
  assert {n.split("/")[0] for n in names} == {"lars_optax", f"lars_optax-{PROJECT['version']}.dist-info"}
  metadata = zipfile.ZipFile(WHEEL).read(f"lars_optax-{PROJECT['version']}.dist-info/METADATA").decode()
  assert "License-Expression: Apache-2.0" in metadata and "Project-URL: Source," in metadata


@built
def test_sdist_ships_the_license():
  assert SDIST.exists()
  names = tarfile.open(SDIST).getnames()
  assert f"lars_optax-{PROJECT['version']}/LICENSE" in names


def _extra_closure(extra: str) -> set[str]:
  """The requirement names an extra pulls in, through the project's own extras it names."""
  names = set()
  for text in PROJECT["optional-dependencies"][extra]:
    requirement = Requirement(text)
    if canonicalize_name(requirement.name) == canonicalize_name(PROJECT["name"]):
      names |= set().union(*(_extra_closure(e) for e in requirement.extras))
    else:
      names.add(canonicalize_name(requirement.name))
  return names


def test_the_default_training_install_has_no_tensorflow_and_ci_installs_it():
  assert not {name for name in _extra_closure("train") if name.startswith("tensorflow")}
  assert {"tensorflow-cpu", "tensorflow-datasets"} <= _extra_closure("tfds") <= _extra_closure("dev")
