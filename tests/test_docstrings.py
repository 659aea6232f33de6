"""The Examples in lars_optax's docstrings run and print what they claim."""

import doctest
import importlib

import pytest

MODULES = ["_lars", "_trust_ratio", "_diagnostics", "_masks", "_schedules"]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
  module = importlib.import_module(f"lars_optax.{module_name}")
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0
