"""The Examples in the docstrings of models/ (and the training entry point) run and print what they claim."""

import doctest
import importlib
import pkgutil

import pytest

import models

MODULES = [*sorted(f"models.{info.name}" for info in pkgutil.iter_modules(models.__path__)), "models"]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
  module = importlib.import_module(module_name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0
