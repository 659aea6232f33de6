"""The README's Python examples run as written (printing what they show, where they show it), and its
install, test and docs commands are the ones CI uses.

A ```python block may be followed directly by a ```text block: that block is then the block's expected
standard output, compared as doctest compares (``...`` matches anything, whitespace runs are equal).
"""

import contextlib
import doctest
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"


def python_blocks() -> list[tuple[str, str | None]]:
  """(code, expected output or None) for every ```python block of the README."""
  found = re.findall(r"```python\n(.*?)```\n(?:\n?```text\n(.*?)```\n)?", README.read_text(), flags=re.DOTALL)
  return [(code, output or None) for code, output in found]


def bash_blocks() -> list[str]:
  return [block.strip() for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)]


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index):
  code, expected = python_blocks()[index]
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    exec(compile(code, f"README.md block {index}", "exec"), {})
  if expected is not None:
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    assert checker.check_output(expected, stdout.getvalue(), flags), (
      f"README.md block {index} printed:\n{stdout.getvalue()}\nthe README shows:\n{expected}"
    )


def test_readme_opens_with_the_train_and_test_commands_that_ci_runs():
  train_command, test_command = bash_blocks()[:2]
  assert train_command.endswith("python train.py")
  ci = CI_SCRIPT.read_text()
  install = re.search(r"pip install -e \"\.\[\w+\]\"", test_command).group(0)
  assert install in ci
  assert test_command.endswith("python -m pytest") and "python -m pytest" in ci


def test_readme_docs_command_is_the_one_ci_runs():
  docs = [block for block in bash_blocks() if "sphinx-build" in block]
  assert len(docs) == 1
  build = docs[0].split("&&")[-1].strip()
  assert build.startswith("sphinx-build -W --keep-going docs ") and build in CI_SCRIPT.read_text()
  assert 'pip install -e ".[docs]"' in docs[0]
