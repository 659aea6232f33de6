"""The README's Python examples run as written and print what the README shows.

Each ```python block is followed by a ```text block: the block's expected standard output, compared as
doctest compares (``...`` matches anything, whitespace runs are equal).
"""

import contextlib
import doctest
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks() -> list[tuple[str, str | None]]:
  """(code, expected output or None) for every ```python block of the README."""
  found = re.findall(r"```python\n(.*?)```\n(?:\n?```text\n(.*?)```\n)?", README.read_text(), flags=re.DOTALL)
  return [(code, output or None) for code, output in found]


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index):
  code, expected = python_blocks()[index]
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    exec(compile(code, f"README.md block {index}", "exec"), {})
  assert expected is not None, f"README.md block {index} shows no output: follow it with a ```text block"
  checker = doctest.OutputChecker()
  flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
  assert checker.check_output(expected, stdout.getvalue(), flags), (
    f"README.md block {index} printed:\n{stdout.getvalue()}\nthe README shows:\n{expected}"
  )


def test_readme_links_and_images_are_absolute_urls():
  """A package index renders the README away from the repository: a relative link or image breaks there."""
  targets = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
  assert targets and [t for t in targets if not t.startswith("https://")] == []
