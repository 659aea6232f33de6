"""lars_optax's docstring Examples run and print what they claim; every public function has one."""

import doctest
import importlib
import inspect

import pytest

import lars_optax

MODULES = ["_lars", "_trust_ratio", "_diagnostics", "_masks", "_schedules"]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
  module = importlib.import_module(f"lars_optax.{module_name}")
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0, f"lars_optax.{module_name} has no docstring example"
  assert result.failed == 0


def test_every_module_with_public_names_is_doctested():
  modules = {getattr(lars_optax, name).__module__ for name in lars_optax.__all__}
  assert modules == {f"lars_optax.{name}" for name in MODULES}


@pytest.mark.parametrize(
  "name", sorted(name for name in lars_optax.__all__ if inspect.isfunction(getattr(lars_optax, name)))
)
def test_every_public_function_has_an_example(name):
  finder = doctest.DocTestFinder(recurse=False)
  (test,) = finder.find(getattr(lars_optax, name), name)
  assert test.examples, f"lars_optax.{name} has no Example in its docstring"
