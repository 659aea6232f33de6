"""train.py's command line: --help, user errors (one message, exit 2), no TensorFlow on the default path.

Each test starts train.py in a fresh interpreter, as a user would; the default-path runs go through
`runpy` so that the same interpreter can then report what was imported.
"""

import json
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


def test_every_default_field_has_a_one_line_meaning():
  fields = cli.config_fields()
  assert sorted(field.name for field in fields) == sorted(default.get_config().keys())
  for field in fields:
    assert field.meaning, f"configs/default.py: config.{field.name} has no comment"
    assert field.section, f"configs/default.py: config.{field.name} has no section heading"


def test_the_default_run_time_is_one_measured_figure_everywhere():
  """train.py's usage line (the top of --help), configs/default.py and the README give the same figure."""
  usage = (REPO_ROOT / "train.py").read_text()
  figure = re.search(r"# digits, small AlexNet-BN, LARS \((.+)\)", usage).group(1)
  assert re.search(r"\d+ s wall", figure) and "on 2" in figure, figure
  assert f"Time:      {figure}" in default.__doc__
  readme = (REPO_ROOT / "README.md").read_text()
  assert f"8x8 digits, {figure}):" in readme  # the opening command
  assert f"(10 epochs),\n{figure} including imports" in readme  # the Training section


@pytest.mark.timeout(120)
def test_help_exits_0_lists_every_field_and_imports_no_tensorflow():
  status, stdout, _ = _train("--help")
  assert status == {"exit": 0, "tensorflow": False}
  for field in default.get_config().keys():
    assert f"--config.{field}=" in stdout
  assert "--config.batch_size=128 " in stdout and "--config.learning_rate=10.0 " in stdout
  assert "--config.model='small_alexnet_bn' " in stdout
  assert "--config=configs/resnet50_lars.py:8192" in stdout and "--workdir" in stdout


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
  ("args", "message"),
  [
    (["--config.nosuchfield=1"], r"--config.nosuchfield=1: the config has no field 'nosuchfield'"),
    (["--config.batch_siz=8"], r"no field 'batch_siz'. Did you mean 'batch_size'"),
    (["--config.batch_size=abc"], r"--config.batch_size=abc: .*\(its default: 128, int\)"),
    (["--config=configs/resnet50_lars.py:abc"], r"--config=configs/resnet50_lars.py:abc: could not load"),
    (["--config.model=nosuchmodel"], r"config.model must be one of \['alexnet', .*got 'nosuchmodel'"),
    (["--config.momentum=1.5"], r"config.momentum=1.5: momentum must be in \[0, 1\)"),
  ],
  ids=["unknown-field", "misspelt-field", "bad-value", "bad-batch-argument", "unknown-model", "bad-momentum"],
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
  assert "expected_top1" not in stdout  # None: omitted
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
