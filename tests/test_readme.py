"""The README's Python examples run as written, and its two opening commands are the ones CI uses."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
CI_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "run"


def python_blocks() -> list[str]:
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_block_runs(index):
  exec(compile(python_blocks()[index], f"README.md block {index}", "exec"), {})


def test_readme_opens_with_the_train_and_test_commands_that_ci_runs():
  bash_blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
  train_command, test_command = bash_blocks[0].strip(), bash_blocks[1].strip()
  assert train_command.endswith("python train.py")
  ci = CI_SCRIPT.read_text()
  install = re.search(r"pip install -e \"\.\[\w+\]\"", test_command).group(0)
  assert install in ci
  assert test_command.endswith("python -m pytest") and "python -m pytest" in ci
