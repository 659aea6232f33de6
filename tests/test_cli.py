"""train.py's command line: --help, user errors (one message, exit 2), no TensorFlow on the default path.

Each test starts train.py in a fresh interpreter, as a user would; the default-path runs go through
`runpy` so that the same interpreter can then report what was imported.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from configs import default
from training import cli

REPO_ROOT = Path(__file__).resolve().parents[1]

# Runs train.py as __main__ with the given arguments, then prints the exit status and whether
# TensorFlow was imported, as the last line of stdout (JSON).
_RUN_TRAIN = textwrap.dedent(
  """
  import json, runpy, sys
  sys.argv = ["train.py", *sys.argv[1:]]
  try:
    runpy.run_path("train.py", run_name="__main__")
    code = 0
  except SystemExit as exit:
    code = exit.code or 0
  print(json.dumps({"exit": code, "tensorflow": "tensorflow" in sys.modules}))
  """
)


def _train(*args: str, timeout: float = 300) -> tuple[dict, str, str]:
  result = subprocess.run(
    [sys.executable, "-c", _RUN_TRAIN, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
  )
  *lines, last = result.stdout.rstrip("\n").split("\n")
  return json.loads(last), "\n".join(lines), result.stderr


def _leaves(config, prefix=""):
  """Every leaf field of a ConfigDict by its dotted path, computed here independently of training.cli."""
  for key, value in config.items():
    if hasattr(value, "items") and len(value):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def test_every_default_field_has_a_meaning_and_a_section():
  meanings = cli.field_meanings()
  assert set(dict(_leaves(default.get_config()))) <= set(meanings)
  for name, (section, meaning) in meanings.items():
    assert meaning, f"configs/default.py: config.{name} has no line comment"
    assert section and section != "Other", f"configs/default.py: config.{name} has no heading above it"


def _help(columns: int) -> str:
  result = subprocess.run(
    [sys.executable, "-c", _RUN_TRAIN, "--help"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "COLUMNS": str(columns)},
  )
  *lines, last = result.stdout.rstrip("\n").split("\n")
  assert json.loads(last) == {"exit": 0, "tensorflow": False}, result.stderr
  return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("columns", [40, 80, 200])
def test_help_fits_a_terminal_and_shows_each_field_with_its_default_and_meaning(columns):
  lines = _help(columns).splitlines()
  assert len(lines) <= 200
  assert max(map(len, lines)) <= 80, max(lines, key=len)
  meanings = cli.field_meanings()
  for name, value in _leaves(default.get_config()):
    flag = f"    --config.{name}={value!r}"
    assert flag in lines, flag  # name and default on one line of their own
    first_word = meanings[name][1].split()[0]
    assert lines[lines.index(flag) + 1].strip().startswith(first_word), name  # the meaning right below
  for flag in ("--config=FILE[:ARG]", "--workdir=None", "--allow_config_change=False"):
    assert any(line.startswith(f"  {flag}") for line in lines), flag


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
  ("args", "message"),
  [
    (["--config.nosuchfield=1"], r"--config.nosuchfield=1: the config has no field 'nosuchfield'"),
    (["--config.batch_siz=8"], r"no field 'batch_siz'. Did you mean 'batch_size'"),
    (["--config.batch_size=abc"], r"--config.batch_size=abc: ValueError: invalid literal for int\(\)"),
    (["--config=configs/resnet50_lars.py:abc"], r"--config=configs/resnet50_lars.py:abc: ValueError: "),
    (["--config=configs/nosuchfile.py"], r"--config=configs/nosuchfile.py: .*No such file"),
    (["--nosuchflag"], r"Unknown command line flag 'nosuchflag'"),
    (["--config.model=nosuchmodel"], r"config.model must be one of \['alexnet', .*got 'nosuchmodel'"),
    (["--config.momentum=1.5"], r"config\.momentum.*\[0, 1\).*1\.5"),
  ],
  ids=[
    "unknown-field",
    "misspelt-field",
    "bad-value",
    "bad-batch-argument",
    "missing-config-file",
    "unknown-flag",
    "unknown-model",
    "bad-momentum",
  ],
)
def test_user_errors_are_one_message_exit_2_and_create_nothing(args, message, tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
    [sys.executable, "train.py", f"--workdir={workdir}", *args],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("train.py: error: ")]
  assert len(errors) == 1 and re.search(message, errors[0]), result.stderr
  assert result.stdout == ""  # nothing printed before the check, not even the workdir
  assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_default_path_imports_no_tensorflow_logs_plain_lines_and_resumes_a_finished_run(tmp_path):
  workdir = tmp_path / "run"
  args = (
    f"--workdir={workdir}",
    "--config.num_train_steps=4",
    "--config.log_every_steps=2",
    "--config.steps_per_eval=1",
    "--config.checkpoint_every_steps=0",
  )
  status, stdout, stderr = _train(*args)
  assert status == {"exit": 0, "tensorflow": False}, stderr
  # Not a terminal: one plain line per logging step, no bar frames.
  assert re.findall(r"^step (\d+)/4: loss [\d.]+, lr [\d.e-]+, \d+ img/s$", stdout, flags=re.M) == ["2", "4"]
  assert "\r" not in stdout + stderr and "step/s" not in stdout + stderr
  for name in ("model:", "data set:", "optimizer:", "devices:", "batch:", "steps:", "learning rate:"):
    assert re.search(rf"^{name}\s+\S", stdout, flags=re.M), name
  assert re.search(rf"^workdir:\s+{re.escape(str(workdir))}$", stdout, flags=re.M)
  assert re.search(r"^  eval/accuracy: \d{1,3}\.\d\d%$", stdout, flags=re.M)
  assert re.search(r"^  expected_top1: [\d.]+%$", stdout, flags=re.M)  # The config's own figure.
  assert f"outputs: {workdir} (" in stdout
  events = sorted(workdir.glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 0
  metrics = (workdir / "metrics.jsonl").read_text()

  # Resuming the finished run: says so, exits 0, evaluates nothing, writes no new events file.
  status, again, stderr = _train(*args)
  assert status == {"exit": 0, "tensorflow": False}, stderr
  assert f"already complete: step 4 of 4 in {workdir}" in again
  assert "eval top-1" not in again and re.search(r"^  eval/accuracy: ", again, flags=re.M)
  assert sorted(workdir.glob("events.out.tfevents.*")) == events
  assert (workdir / "metrics.jsonl").read_text() == metrics
