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
from training import checkpoints, config_checks, loop, metrics_log, preemption, run_config, steps, workdir
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


def _interrupt_after_two_checkpoints(workdir: Path) -> int:
  """Starts a long tiny run, sends Ctrl-C once two checkpoints exist; checks the exit; the last step."""
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
  assert f"interrupted at step {stopped_at}: saved" in stderr and "Traceback" not in stderr
  assert 4 <= stopped_at < 5000
  return stopped_at


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_config_change_and_damaged_checkpoint_and_metrics(tmp_path):
  workdir = tmp_path / "run"
  # 1. Ctrl-C once a checkpoint exists: saves, exits 75 (preempted, resumable).
  stopped_at = _interrupt_after_two_checkpoints(workdir)
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
  # Allowed, but the checkpoints hold another optimizer's state: exit 1, and the record is unchanged.
  record = (workdir / "config.json").read_bytes()
  other = _train(workdir, "--config.optimizer=sgd", "--config.learning_rate=0.1", "--allow_config_change")
  assert other.returncode == ExitCode.ERROR and "another model or optimizer" in other.stderr, other.stderr[
    -3000:
  ]
  assert (workdir / "config.json").read_bytes() == record and not list(workdir.glob("config.*.json"))

  # 3. Damage: the newest checkpoint in the middle of a data file, metrics.jsonl with lines that are
  # not records. The resume (a shorter num_train_steps compresses the schedule: allowed explicitly) sets
  # the checkpoint aside, resumes from the one before, reports the lines, and finishes with exit 0.
  previous = _steps(workdir)[-2]
  _damage_middle(workdir / "checkpoints" / str(stopped_at))
  with (workdir / "metrics.jsonl").open("ab") as file:
    file.write(b"\xff\xfe not utf-8\n{}\n42\n")
  end = stopped_at + 3
  dropout = "--config.model_kwargs.dropout_rate=0.25"
  resumed = _train(workdir, f"--config.num_train_steps={end}", dropout, "--allow_config_change")
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

  # 4. Running the finished run again trains nothing and shows the recorded metrics, no new wall time.
  again = _train(workdir, f"--config.num_train_steps={end}", dropout)  # The new record: no change.
  assert again.returncode == ExitCode.FINISHED, again.stderr[-3000:]
  assert "already complete" in again.stdout and "wall_time_s" not in again.stdout
  assert "wall_time_s" in resumed.stdout  # The run that trained reports its time.


def _handlers_installed(pid: int) -> bool:
  """Whether process ``pid`` catches SIGTERM (Python does not by default: train.py's handler does)."""
  status = Path(f"/proc/{pid}/status").read_text()
  caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
  return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc")
@pytest.mark.parametrize(
  "signals, status",
  [
    ((signal.SIGINT,), ExitCode.PREEMPTED),
    ((signal.SIGTERM,), ExitCode.PREEMPTED),
    ((signal.SIGINT, signal.SIGINT), 130),  # A second Ctrl-C: stop at once.
  ],
)
def test_signals_during_start_up_exit_with_one_line(tmp_path, signals, status):
  """While JAX is imported and started: no KeyboardInterrupt inside it, no traceback, no crash."""
  process = subprocess.Popen(
    [sys.executable, "train.py", f"--workdir={tmp_path / 'run'}", *TINY, "--config.num_train_steps=50"],
    cwd=REPO_ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.monotonic() + 60
  while not _handlers_installed(process.pid):
    assert process.poll() is None and time.monotonic() < deadline
    time.sleep(0.005)
  for signum in signals:
    process.send_signal(signum)
    time.sleep(0.2)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == status, stderr[-3000:]
  [line] = stderr.strip().splitlines()
  assert line.startswith("train.py: interrupted")
  assert not (tmp_path / "run" / "checkpoints").exists() or not _steps(tmp_path / "run")


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
  assert "Not all 3 processes joined" in result.stderr and f"localhost:{port}" in result.stderr
  assert "Traceback" not in result.stderr and time.monotonic() - started < 60


# Unit tests of the pieces.


def _train_metrics(skip: bool, max_consecutive: int = 10) -> loop._TrainMetrics:
  return loop._TrainMetrics(0, batch_size=32, skip=skip, max_consecutive=max_consecutive)


def _step_metrics(finite, loss=1.0) -> dict:
  return {"finite": finite, "loss": loss, "accuracy": 0.5, "grad_norm": 1.0, "lr": 0.1}


def test_non_finite_guard_stops_at_the_first_bad_step_without_skipping():
  guard = _train_metrics(skip=False)
  guard.add(1, _step_metrics(jnp.asarray(True), jnp.asarray(2.3)))
  guard.check()
  guard.add(2, _step_metrics(jnp.asarray(True), jnp.asarray(2.0)))
  guard.add(3, _step_metrics(jnp.asarray(False), jnp.asarray(np.nan)))
  with pytest.raises(TrainingError, match="diverged at step 3: the loss \\(nan\\)"):
    guard.check()


def test_non_finite_guard_allows_max_consecutive_skips_then_stops():
  guard = _train_metrics(skip=True, max_consecutive=2)
  pattern = [False, False, True, False, False]  # two skips, a good step, two skips: fine
  for step, finite in enumerate(pattern, start=1):
    guard.add(step, _step_metrics(np.bool_(finite)))
  guard.check()
  guard.add(6, _step_metrics(np.bool_(False), np.float32(np.nan)))
  with pytest.raises(TrainingError, match="3 consecutive non-finite steps were skipped \\(steps 4 to 6\\)"):
    guard.check()


def test_window_means_ignore_skipped_steps():
  window = _train_metrics(skip=True)
  for step, (loss, finite) in enumerate(((1.0, True), (np.nan, False), (3.0, True)), start=1):
    window.add(step, {**_step_metrics(finite, loss), "grad_norm": 1.0 if finite else np.inf})
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
  parallel = steps.JitSteps(config, sync_batch_norm=True, devices=jax.devices()[:1])
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


def _check(config, workdir, *, resuming=True, allow_change=False) -> None:
  run_config.check(config, workdir, resuming=resuming, allow_change=allow_change)


def test_config_record_refuses_trajectory_changes_and_allows_neutral_ones(tmp_path):
  run_config.record(default.get_config(), tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["learning_rate"] == 10.0

  neutral = default.get_config()
  neutral.num_train_steps, neutral.log_every_steps, neutral.keep_checkpoints = 500, 1, 5
  _check(neutral, tmp_path)
  run_config.record(neutral, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 500
  assert not (tmp_path / "config.1.json").exists()

  changed = default.get_config()
  changed.batch_size, changed.optimizer, changed.model_kwargs.dropout_rate = 64, "sgd", 0.1
  changed.parallelism = "pmap" if changed.parallelism == "jit" else "jit"  # Another reduction order.
  with pytest.raises(ConfigError) as error:
    _check(changed, tmp_path)
  message = str(error.value)
  for line in ("batch_size: 128 → 64", "optimizer: 'lars' → 'sgd'", "model_kwargs.dropout_rate: None → 0.1"):
    assert line in message
  assert (
    "parallelism: " in message and "num_train_steps" not in message and "--allow_config_change" in message
  )
  _check(changed, tmp_path / "fresh", resuming=False)  # Without checkpoints there is nothing to resume.
  # Allowed: the check writes nothing (the restore may still fail); the record replaces the old one,
  # which is kept.
  _check(changed, tmp_path, allow_change=True)
  assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 128
  run_config.record(changed, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["batch_size"] == 64
  assert json.loads((tmp_path / "config.1.json").read_text())["batch_size"] == 128


@pytest.mark.parametrize("content", [None, b"\xff{", b"[1, 2]", b'"a string"'])
def test_missing_unreadable_or_non_object_config_record_is_refused_unless_allowed(tmp_path, content):
  if content is not None:
    (tmp_path / "config.json").write_bytes(content)
  with pytest.raises(ConfigError, match=r"config\.json is (missing|unreadable|not a JSON object)"):
    _check(default.get_config(), tmp_path)
  _check(default.get_config(), tmp_path, allow_change=True)
  assert (tmp_path / "config.json").exists() == (content is not None)  # Still untouched.


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


def test_a_signal_before_the_first_step_requests_a_stop_and_is_forgotten_after_the_run():
  previous = signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionHandler() as handler:
    assert not handler.should_stop(0)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
    assert handler.should_stop(0)
  assert signal.getsignal(signal.SIGTERM) is previous and not preemption.requested()


def test_a_locked_workdir_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
  lock, holder = workdir.lock(tmp_path / "run")
  assert f"pid {os.getpid()}" in holder
  with pytest.raises(
    ConfigError, match=rf"--workdir={tmp_path / 'run'} is in use by another run \(pid {os.getpid()}"
  ):
    workdir.lock(tmp_path / "run")
  lock.close()
  # A holder killed with SIGKILL: the OS releases its lock, nothing stale is left.
  code = f"import time; from training import workdir; held = workdir.lock({str(tmp_path / 'run')!r}); "
  with subprocess.Popen(
    [sys.executable, "-u", "-c", code + "print('locked'); time.sleep(120)"],
    cwd=REPO_ROOT,
    stdout=subprocess.PIPE,
    text=True,
  ) as holder:
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(ConfigError, match=f"pid {holder.pid} on host"):
      workdir.lock(tmp_path / "run")
    holder.kill()
  workdir.lock(tmp_path / "run")[0].close()


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_a_workdir_that_cannot_be_created_is_a_config_error(tmp_path, where):
  (tmp_path / "file").write_text("")
  path = tmp_path / "file" if where == "file" else tmp_path / "file" / "run"
  with pytest.raises(ConfigError, match=rf"--workdir={path} cannot be created or written"):
    workdir.lock(path)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
  "flags, expected",
  [
    (["--process_id=5", "--num_processes=2"], "--process_id must be less than --num_processes"),
    (["--num_processes=0"], "--num_processes=0"),
    (["--workdir={tmp}/file"], "cannot be created or written"),
    (["--workdir={tmp}/run"], "is in use by another run"),
  ],
)
def test_bad_process_flags_and_workdirs_exit_2_with_one_message_at_start(tmp_path, flags, expected):
  (tmp_path / "file").write_text("")
  lock = workdir.lock(tmp_path / "run")[0]  # Another run holds it.
  result = subprocess.run(
    [sys.executable, "train.py", *TINY, *[flag.format(tmp=tmp_path) for flag in flags]],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  lock.close()
  assert result.returncode == ExitCode.USAGE, result.stderr[-3000:]
  assert expected in result.stderr and "Traceback" not in result.stderr and not result.stdout


def test_tensorboard_events_reach_the_disk_within_seconds_of_each_logged_step(tmp_path):
  log = metrics_log.MetricsLog(tmp_path, start_step=0)
  log.write(2, {"train/loss": 1.5})
  log.write(4, {"train/accuracy": 0.5})  # tensorboardX writes the first event at once, later ones late.
  [events] = tmp_path.glob("events.out.tfevents.*")
  deadline = time.monotonic() + 10
  while b"train/accuracy" not in events.read_bytes():  # Before close: a kill now loses nothing logged.
    assert time.monotonic() < deadline, "the second logged step is not on disk after 10 s"
    time.sleep(0.1)
  log.close()
