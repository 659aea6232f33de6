"""train.py under faults: Ctrl-C, a changed config, a damaged checkpoint and metrics.jsonl, divergence,
a peer that never starts; exit statuses 0 / 1 / 2 / 75 (training/errors.py).

The subprocess runs are few and tiny (batch 32, no evaluation); the rest are unit tests of the pieces.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import models
from configs import default
from training import checkpoints, config_checks, distributed, loop, metrics_log, preemption, run_config, steps
from training.errors import ConfigError, ExitCode, TrainingError

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
  "--config=configs/default.py",
  "--config.batch_size=32",
  "--config.steps_per_eval=0",
  "--config.diagnostics_every_steps=0",
  "--config.log_every_steps=2",
  "--config.checkpoint_every_steps=2",
  "--config.progress_bar=false",
]


def _train(workdir: Path, *flags: str, timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "train.py", f"--workdir={workdir}", *TINY, *flags],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _steps(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _restore(workdir: Path, step: int) -> dict:
  manager = ocp.CheckpointManager((workdir / "checkpoints").resolve())
  state = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  return state


def _damage_middle(step_dir: Path) -> None:
  """Overwrites 64 bytes in the middle of the checkpoint's largest data file (size unchanged)."""
  path = max((p for p in step_dir.rglob("d/*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(path.read_bytes())
  data[len(data) // 2 : len(data) // 2 + 64] = b"\x7f" * 64
  path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_config_change_and_damaged_checkpoint_and_metrics(tmp_path):
  workdir = tmp_path / "run"
  # 1. Ctrl-C once a checkpoint exists: saves, exits 75 (preempted, resumable).
  process = subprocess.Popen(
    [
      sys.executable,
      "train.py",
      f"--workdir={workdir}",
      *TINY,
      "--config.num_train_steps=5000",
      "--config.model_kwargs.dropout_rate=0.25",
    ],
    cwd=REPO_ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.monotonic() + 300
  while not ((workdir / "checkpoints").exists() and len(_steps(workdir)) >= 2):
    assert process.poll() is None and time.monotonic() < deadline, "train.py did not reach a checkpoint"
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == ExitCode.PREEMPTED, stderr[-3000:]
  stopped_at = _steps(workdir)[-1]
  assert 4 <= stopped_at < 5000
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["model_kwargs"]["dropout_rate"] == 0.25 and recorded["learning_rate"] == 10.0

  # 2. Resuming with another learning rate and batch is refused (exit 2), listing old -> new.
  changed = _train(
    workdir,
    "--config.num_train_steps=5000",
    "--config.model_kwargs.dropout_rate=0.25",
    "--config.learning_rate=5",
  )
  assert changed.returncode == ExitCode.USAGE, changed.stderr[-3000:]
  assert "learning_rate: 10.0 → 5.0" in changed.stderr and "Traceback" not in changed.stderr
  assert _steps(workdir)[-1] == stopped_at

  # 3. Damage: the newest checkpoint in the middle of a data file, metrics.jsonl with lines that are
  # not records. The resume (extending num_train_steps, a neutral change) sets the checkpoint aside,
  # resumes from the one before, reports the lines, and finishes with exit 0.
  previous = _steps(workdir)[-2]
  _damage_middle(workdir / "checkpoints" / str(stopped_at))
  with (workdir / "metrics.jsonl").open("ab") as file:
    file.write(b"\xff\xfe not utf-8\n{}\n42\n")
  end = stopped_at + 3
  resumed = _train(workdir, f"--config.num_train_steps={end}", "--config.model_kwargs.dropout_rate=0.25")
  assert resumed.returncode == ExitCode.FINISHED, resumed.stderr[-3000:]
  assert len(list((workdir / "checkpoints").glob(f"{stopped_at}.corrupt-*"))) == 1  # kept, renamed
  assert f"{workdir / 'checkpoints' / str(stopped_at)} is unusable" in resumed.stderr
  assert f"resuming from the checkpoint at step {previous}" in resumed.stdout
  assert "skipped 3 line(s)" in resumed.stderr
  assert _steps(workdir)[-1] == end
  final = _restore(workdir, end)
  assert not checkpoints.nonfinite_leaves(final)
  assert int(final["step"]) == end
  logged = [r["step"] for r in metrics_log.read_metrics(workdir / "metrics.jsonl")]
  assert logged == sorted(set(logged)) and logged[-1] == end  # no duplicate, no gap at the resume


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_divergent_run_exits_1_naming_the_step_and_saves_nothing_non_finite(tmp_path):
  workdir = tmp_path / "nan"
  result = _train(workdir, "--config.num_train_steps=12", "--config.learning_rate=1e30")
  assert result.returncode == ExitCode.ERROR, result.stderr[-3000:]
  assert "Training diverged at step" in result.stderr and "Traceback" not in result.stderr
  for step in _steps(workdir):
    assert not checkpoints.nonfinite_leaves(_restore(workdir, step)), step
  assert _steps(workdir) == [2]  # Steps 1 and 2 are still finite (warm-up from 0); step 3 is not.


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_peer_that_never_starts_is_reported_within_the_initialization_timeout(tmp_path):
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  started = time.monotonic()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [
      sys.executable,
      "train.py",
      f"--workdir={tmp_path}",
      *TINY,
      f"--coordinator_address=localhost:{port}",
      "--num_processes=3",
      "--process_id=0",
      "--initialization_timeout=3",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=100,
    env=env,
  )
  assert result.returncode == ExitCode.ERROR, result.stderr[-3000:]
  assert "process(es) [1, 2] did not start" in result.stderr
  assert "Not all 3 processes joined" in result.stderr and f"localhost:{port}" in result.stderr
  assert time.monotonic() - started < 60


def test_join_message_names_the_missing_processes(tmp_path):
  markers = tmp_path / ".processes"
  markers.mkdir()
  (markers / "0").write_text("1\n")
  (markers / "2").write_text("1\n")
  stale = markers / "1"
  stale.write_text("1\n")
  os.utime(stale, (0, 0))  # From an earlier run.
  started = distributed._started_peers(markers, since=time.time() - 60)
  assert started == [0, 2]
  message = distributed.describe_missing(
    coordinator_address="host0:1234", num_processes=4, process_id=0, started=started, timeout_s=30
  )
  assert "process(es) [1, 3] did not start" in message and "host0:1234" in message and "30 s" in message


# Unit tests of the pieces.


def test_non_finite_guard_stops_at_the_first_bad_step_without_skipping():
  guard = steps.NonFiniteGuard(skip=False, max_consecutive=10)
  guard.add(1, {"finite": jnp.asarray(True), "loss": jnp.asarray(2.3)})
  guard.check()
  guard.add(2, {"finite": jnp.asarray(True), "loss": jnp.asarray(2.0)})
  guard.add(3, {"finite": jnp.asarray(False), "loss": jnp.asarray(np.nan)})
  with pytest.raises(TrainingError, match="diverged at step 3: the loss \\(nan\\)"):
    guard.check()


def test_non_finite_guard_allows_max_consecutive_skips_then_stops():
  guard = steps.NonFiniteGuard(skip=True, max_consecutive=2)
  pattern = [False, False, True, False, False]  # two skips, a good step, two skips: fine
  for step, finite in enumerate(pattern, start=1):
    guard.add(step, {"finite": np.bool_(finite), "loss": np.float32(1.0)})
  guard.check()
  guard.add(6, {"finite": np.bool_(False), "loss": np.float32(np.nan)})
  with pytest.raises(TrainingError, match="3 consecutive non-finite steps were skipped \\(steps 4 to 6\\)"):
    guard.check()


def test_window_means_ignore_skipped_steps():
  window = loop._Window(0, batch_size=32)
  for loss, finite in ((1.0, True), (np.nan, False), (3.0, True)):
    window.add(
      {"loss": loss, "accuracy": 0.5, "grad_norm": 1.0 if finite else np.inf, "lr": 0.1, "finite": finite}
    )
  state = steps.TrainState(
    step=jnp.asarray(3), params={}, batch_stats={}, opt_state=(), skipped_steps=jnp.asarray(1)
  )
  record = window.flush(3, state)
  assert record["train/loss"] == 2.0 and record["train/grad_norm"] == 1.0
  assert record["train/skipped_steps_in_window"] == 1 and record["train/skipped_steps"] == 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize("skip", [False, True])
def test_finite_gradients_with_an_overflowing_update_are_flagged_and_skipped(skip):
  """An SGD step of 3e38 · g overflows float32 though g is finite: flagged; with skipping, not applied."""
  model = models.get_model("conv1d", num_classes=10)
  config = steps.StepConfig(
    model=model, tx=optax.sgd(3e38), learning_rate_fn=lambda count: 3e38, num_classes=10, skip_nonfinite=skip
  )
  parallel = steps.Jit(config, sync_batch_norm=True, devices=jax.devices()[:1])
  state = jax.device_get(steps.create_train_state(model, config.tx, seed=0, input_shape=(40, 1)))
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.standard_normal((1, 8, 40, 1)).astype(np.float32),
    "label": rng.integers(0, 10, (1, 8)).astype(np.int32),
  }
  after, metrics = parallel.train_step(parallel.place_state(state), parallel.place_batch(batch))
  after, metrics = jax.device_get((after, metrics))
  assert np.isfinite(metrics["grad_norm"]) and not metrics["finite"]
  assert bool(checkpoints.nonfinite_leaves(after.params)) != skip
  assert int(after.skipped_steps) == int(skip)


def test_config_record_refuses_trajectory_changes_and_allows_neutral_ones(tmp_path):
  config = default.get_config()
  run_config.check_and_record(config, tmp_path, resuming=False, allow_change=False)
  assert json.loads((tmp_path / "config.json").read_text())["learning_rate"] == 10.0

  neutral = default.get_config()
  neutral.num_train_steps, neutral.log_every_steps, neutral.keep_checkpoints = 500, 1, 5
  run_config.check_and_record(neutral, tmp_path, resuming=True, allow_change=False)
  assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 500

  changed = default.get_config()
  changed.batch_size, changed.optimizer, changed.model_kwargs.dropout_rate = 64, "sgd", 0.1
  with pytest.raises(ConfigError) as error:
    run_config.check_and_record(changed, tmp_path, resuming=True, allow_change=False)
  message = str(error.value)
  for line in ("batch_size: 128 → 64", "optimizer: 'lars' → 'sgd'", "model_kwargs.dropout_rate: None → 0.1"):
    assert line in message
  assert "num_train_steps" not in message and "--allow_config_change" in message
  # Without checkpoints there is nothing to resume: the new config is simply recorded.
  run_config.check_and_record(changed, tmp_path / "fresh", resuming=False, allow_change=False)
  # Allowed: recorded, the old record kept.
  run_config.check_and_record(changed, tmp_path, resuming=True, allow_change=True)
  assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 64
  assert json.loads((tmp_path / "config.1.json").read_text())["batch_size"] == 128


def test_unreadable_config_record_is_a_config_error(tmp_path):
  (tmp_path / "config.json").write_bytes(b"\xff{")
  with pytest.raises(ConfigError, match=r"config\.json is unreadable"):
    run_config.check_and_record(default.get_config(), tmp_path, resuming=True, allow_change=False)


def test_model_kwargs_are_checked_against_the_module_fields():
  config = default.get_config()
  config.model_kwargs.dropout_rate = 0.3
  config_checks.validate_config(config, num_devices=1)
  assert config_checks.model_kwargs(config) == {"dropout_rate": 0.3}  # unset placeholders are left out
  config.model = "resnet20"
  with pytest.raises(
    ConfigError, match=r"model_kwargs.dropout_rate: model 'resnet20' has no field.*'num_filters'"
  ):
    config_checks.validate_config(config, num_devices=1)
  config = default.get_config()
  with config.unlocked():
    config.model_kwargs.widht = 2
  with pytest.raises(
    ConfigError, match=r"no field 'widht'; the fields model_kwargs may set are \[.*'dropout_rate'"
  ):
    config_checks.validate_config(config, num_devices=1)


@pytest.mark.parametrize("field", ["learning_rate", "weight_decay", "momentum"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_hyperparameters_are_config_errors(field, value):
  config = default.get_config()
  config[field] = value
  with pytest.raises(ValueError, match=rf"config\.{field}\b"):  # A ConfigError is a ValueError.
    config_checks.validate_config(config, num_devices=1)


def test_damaged_metrics_lines_are_skipped_counted_reported_and_kept(tmp_path, monkeypatch):
  path = tmp_path / metrics_log.METRICS_FILE
  lines = [
    b'{"step": 1, "train/loss": 2.0}',
    b"\xff\xfe\x00garbage",
    b"{}",
    b"42",
    b'"a string"',
    b'{"step": "3"}',
    b'{"step": true}',
    b"",
    b'{"step": 2, "train/loss": 1.0}',
    b'{"step": 3, "train/loss": 0.5}',
    b'{"step": 4, "train',
  ]
  path.write_bytes(b"\n".join(lines))
  warnings = []
  monkeypatch.setattr(metrics_log.logging, "warning", lambda msg, *args: warnings.append(msg % args))
  assert [r["step"] for r in metrics_log.read_metrics(path)] == [1, 2, 3]
  assert metrics_log.truncate_metrics(path, 2) == 2
  assert [r["step"] for r in metrics_log.read_metrics(path)] == [1, 2]
  [warning] = warnings
  assert (
    "skipped 7 line(s)" in warning
    and "line 2: invalid UTF-8" in warning
    and "line 3: no integer 'step'" in warning
  )
  assert (tmp_path / "metrics.jsonl.rejected").read_bytes().count(b"\n") == 7


def test_sigint_requests_a_stop_and_a_second_one_kills():
  previous = signal.getsignal(signal.SIGINT)
  with preemption.PreemptionHandler() as handler:
    assert not handler.should_stop(1)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)
    assert handler.should_stop(2)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL  # a second Ctrl-C ends the process
  assert signal.getsignal(signal.SIGINT) is previous
