"""train.py end to end on the digits: learning, exact evaluation, logs, checkpoints, kill and resume.

One short in-process run of the default config (module fixture) is the reference; the resume test
repeats it through the command line, killed with SIGKILL after a checkpoint, then stopped with SIGTERM,
then finished, and must end with the same parameters and the same metrics.jsonl.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboardX.proto import event_pb2

import input_pipeline
import models
from configs import default
from training import metrics_log
from training.errors import ExitCode
from training.loop import train_and_evaluate

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 1438 // 64  # 1,438 training digits
NUM_STEPS = 3 * STEPS_PER_EPOCH
# 0.75 epochs of 22 steps are 16.5 steps, which the project rounds half up (Python's round() gives 16).
WARMUP_STEPS = 17
CHECKPOINT_EVERY = STEPS_PER_EPOCH
# Applied in-process and as --config.<field>=<value> flags; every step is logged so that records
# do not depend on where a run was interrupted.
OVERRIDES = {
  "num_epochs": 3.0,
  "batch_size": 64,
  "warmup_epochs": 0.75,
  "log_every_steps": 1,
  "eval_every_steps": 2 * STEPS_PER_EPOCH,
  "diagnostics_every_steps": STEPS_PER_EPOCH,
  "checkpoint_every_steps": CHECKPOINT_EVERY,
  "keep_checkpoints": 2,
  "progress_bar": False,
}
# Timing metrics differ between runs by nature.
TIMING_KEYS = ("train/steps_per_sec", "train/images_per_sec")


def _config():
  config = default.get_config()
  config.update(OVERRIDES)
  return config


def _restore(workdir: Path) -> tuple[int, dict]:
  """The newest checkpoint of a run, as saved (a dict of NumPy arrays)."""
  manager = ocp.CheckpointManager((workdir / "checkpoints").resolve())
  step = manager.latest_step()
  state = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  return step, state


def _event_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
  """The scalars of a TensorBoard event file (TFRecord framing: length, CRC, event, CRC), by tag."""
  data, offset, scalars = path.read_bytes(), 0, {}
  while offset < len(data):
    length = int.from_bytes(data[offset : offset + 8], "little")
    event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
    offset += 12 + length + 4
    for value in event.summary.value:
      scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def _checkpoint_steps(workdir: Path) -> list[int]:
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  summary = train_and_evaluate(_config(), workdir)
  return workdir, summary


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_default_config_learns_and_evaluates_exactly(reference):
  workdir, summary = reference
  assert summary["step"] == NUM_STEPS and not summary["preempted"]
  assert summary["eval/accuracy"] > 0.8  # chance is 0.1

  # Exact evaluation over all 359 test digits (a prime: the last batch is padded), recomputed here.
  step, state = _restore(workdir)
  assert step == NUM_STEPS
  _, _, x_test, y_test = input_pipeline.load_arrays("digits")
  model = models.get_model("small_alexnet_bn", num_classes=10)
  logits = np.asarray(
    model.apply({"params": state["params"], "batch_stats": state["batch_stats"]}, x_test, train=False)
  )
  top5 = np.argsort(-logits, axis=-1)[:, :5]
  np.testing.assert_allclose(summary["eval/accuracy"], np.mean(top5[:, 0] == y_test), atol=1e-6)
  np.testing.assert_allclose(
    summary["eval/top5_accuracy"], np.mean(np.any(top5 == y_test[:, None], axis=-1)), atol=1e-6
  )
  log_p = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
  np.testing.assert_allclose(summary["eval/loss"], -np.mean(log_p[np.arange(len(y_test)), y_test]), rtol=1e-4)

  # metrics.jsonl: one record per step; the logged LR of update k is the paper's schedule at t = k - 1:
  # linear warm-up over W steps, then poly(2) decay to 0 over the T - W others.
  records = metrics_log.read_metrics(workdir / "metrics.jsonl")
  assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1))
  peak, t = _config().learning_rate, np.arange(NUM_STEPS)
  expected_lr = np.where(
    t < WARMUP_STEPS,
    peak * t / WARMUP_STEPS,
    peak * (1 - (t - WARMUP_STEPS) / (NUM_STEPS - WARMUP_STEPS)) ** 2,
  )
  np.testing.assert_allclose([r["train/lr"] for r in records], expected_lr, rtol=1e-5, atol=1e-7)
  assert [r["step"] for r in records if "eval/accuracy" in r] == [44, 66]
  trust_steps = [r["step"] for r in records if "trust_ratio/conv1/kernel" in r]
  assert trust_steps == [22, 44, 66]
  # The paper's observation: biases/BN are excluded (λ = 1), kernels get η‖w‖/(‖g‖ + β‖w‖) ≠ 1.
  last = records[-1]
  assert last["trust_ratio/bn1/scale"] == 1.0
  assert 0 < last["trust_ratio/conv1/kernel"] < 1
  # TensorBoard: the same scalars as metrics.jsonl.
  (events,) = workdir.glob("events.out.tfevents.*")
  logged = _event_scalars(events)
  assert [step for step, _ in logged["train/loss"]] == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose([value for _, value in logged["train/loss"]], [r["train/loss"] for r in records])
  assert [step for step, _ in logged["eval/accuracy"]] == [44, 66]

  # Last K checkpoints kept.
  assert _checkpoint_steps(workdir) == [44, 66]


def _launch(workdir: Path, log: Path) -> subprocess.Popen:
  """train.py on the command line with the reference's config; stderr to ``log``."""
  flags = [f"--config.{key}={value}" for key, value in OVERRIDES.items()]
  with log.open("w") as stderr:
    return subprocess.Popen(
      [sys.executable, "train.py", f"--workdir={workdir}", "--config=configs/default.py", *flags],
      cwd=REPO_ROOT,
      stdout=subprocess.DEVNULL,
      stderr=stderr,
    )


def _wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    if process.poll() is not None:
      raise AssertionError(f"train.py exited early: {log.read_text()[-3000:]}")
    if time.monotonic() > deadline:
      process.kill()
      raise AssertionError("timed out waiting for train.py")
    time.sleep(0.05)


def _logged_steps(workdir: Path) -> list[int]:
  return [r["step"] for r in metrics_log.read_metrics(workdir / "metrics.jsonl")]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_resume_after_sigkill_and_sigterm_equals_uninterrupted_run(reference, tmp_path):
  ref_dir, _ = reference
  workdir = tmp_path / "run"

  metrics = workdir / metrics_log.METRICS_FILE
  logs = [tmp_path / f"stderr{i}.txt" for i in range(3)]

  # 1. Killed without warning once the first checkpoint is complete.
  process = _launch(workdir, logs[0])
  _wait_for(lambda: CHECKPOINT_EVERY in _checkpoint_steps(workdir), process, logs[0])
  process.send_signal(signal.SIGKILL)
  assert process.wait(timeout=60) == -signal.SIGKILL

  # 2. Resumed, then preempted (SIGTERM) once it trains past the checkpoint: saves and exits 75. The
  # resumed run rewrites metrics.jsonl (a new file) before its first step: wait for that file to grow.
  killed_inode = metrics.stat().st_ino
  process = _launch(workdir, logs[1])
  _wait_for(
    lambda: (
      metrics.stat().st_ino != killed_inode and max(_logged_steps(workdir), default=0) > CHECKPOINT_EVERY + 1
    ),
    process,
    logs[1],
  )
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=120) == ExitCode.PREEMPTED, logs[1].read_text()[-3000:]
  preempted_at = _checkpoint_steps(workdir)[-1]
  assert CHECKPOINT_EVERY < preempted_at < NUM_STEPS

  # 3. Resumed to the end.
  process = _launch(workdir, logs[2])
  assert process.wait(timeout=300) == 0, logs[2].read_text()[-3000:]

  step, state = _restore(workdir)
  ref_step, ref_state = _restore(ref_dir)
  assert step == ref_step == NUM_STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), state, ref_state)

  records = metrics_log.read_metrics(workdir / "metrics.jsonl")
  ref_records = metrics_log.read_metrics(ref_dir / "metrics.jsonl")
  assert [r["step"] for r in records] == [r["step"] for r in ref_records]  # no gap, no duplicate
  for record, ref_record in zip(records, ref_records, strict=True):
    assert record.keys() == ref_record.keys()
    for key in record.keys() - set(TIMING_KEYS):
      np.testing.assert_allclose(record[key], ref_record[key], rtol=1e-5, atol=1e-7, err_msg=key)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
  ("flag", "field"),
  [
    ("--config.model_kwargs.dropout_rate=1.5", "model_kwargs.dropout_rate"),
    ("--config.num_epochs=1e9", "num_epochs"),
  ],
)
def test_a_bad_value_is_one_line_and_exit_2_before_anything_is_written(flag, field, tmp_path):
  workdir = tmp_path / "workdir"
  command = [sys.executable, "train.py", flag, f"--workdir={workdir}"]
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == ExitCode.USAGE, result.stderr[-2000:]
  assert "Traceback" not in result.stderr and f"config.{field}" in result.stderr
  assert not workdir.exists()
