"""Multi-host for real: two JAX processes on localhost (gloo collectives, 2 CPU devices each) train
exactly like one process with 4 devices.

The global batch is process-major (process p serves the p-th slice), so both runs see the same
examples on the same global device index; only the reduction order of the collectives differs.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from training import metrics_log

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_STEPS = 3
FLAGS = [
  "--config=configs/default.py",
  f"--config.num_train_steps={NUM_STEPS}",
  "--config.batch_size=32",
  "--config.log_every_steps=1",
  "--config.diagnostics_every_steps=0",
  "--config.checkpoint_every_steps=0",
  "--config.progress_bar=False",
]


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def _env(num_devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"  # CPU collectives across processes.
  return env


def _start(workdir: Path, num_devices: int, *extra: str) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, "train.py", f"--workdir={workdir}", *FLAGS, *extra],
    cwd=REPO_ROOT,
    env=_env(num_devices),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )


def _restore(workdir: Path) -> dict:
  manager = ocp.CheckpointManager((workdir / "checkpoints").resolve())
  assert manager.latest_step() == NUM_STEPS
  state = manager.restore(NUM_STEPS, args=ocp.args.StandardRestore())
  manager.close()
  return state


def _run_pair(workdir: Path, parallelism: str) -> None:
  """Two processes of two devices each, coordinated through a free localhost port."""
  port = _free_port()
  processes = [
    _start(
      workdir,
      2,
      f"--config.parallelism={parallelism}",
      f"--coordinator_address=localhost:{port}",
      "--num_processes=2",
      f"--process_id={index}",
    )
    for index in range(2)
  ]
  try:
    for process in processes:
      _, stderr = process.communicate(timeout=300)
      assert process.returncode == 0, stderr.decode()[-4000:]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(600)
@pytest.mark.parametrize("parallelism", ["pmap", "jit"])
def test_two_processes_with_two_devices_equal_one_process_with_four(tmp_path, parallelism):
  # One run at a time: gloo collectives time out when one process lags the other by 30 s, so the
  # pair gets the CPU to itself.
  multi, single = tmp_path / "two_processes", tmp_path / "one_process"
  _run_pair(multi, parallelism)
  reference = _start(single, 4, f"--config.parallelism={parallelism}")
  _, stderr = reference.communicate(timeout=300)
  assert reference.returncode == 0, stderr.decode()[-4000:]

  multi_state, single_state = _restore(multi), _restore(single)
  # float32 sums in another order, after 3 steps at learning rate 10: about 1e-6 apart near zero.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), multi_state, single_state)
  # Not vacuous: the steps ran and built up LARS momentum.
  assert int(multi_state["step"]) == NUM_STEPS
  assert np.any(multi_state["opt_state"]["momentum"]["conv1"]["kernel"] != 0)

  multi_records = metrics_log.read_metrics(multi / "metrics.jsonl")
  single_records = metrics_log.read_metrics(single / "metrics.jsonl")
  assert [r["step"] for r in multi_records] == list(range(1, NUM_STEPS + 1))
  for key in ("train/loss", "train/accuracy", "eval/accuracy", "eval/loss"):
    np.testing.assert_allclose(
      [r[key] for r in multi_records if key in r],
      [r[key] for r in single_records if key in r],
      rtol=1e-5,
      err_msg=key,
    )


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
  "second, field",
  [
    (["--config.batch_size=64"], "config.batch_size: 32 on process 0, 64 on process 1"),
    (["--workdir={tmp}/elsewhere"], "--workdir: "),
  ],
)
def test_processes_of_one_run_with_different_configs_or_workdirs_both_stop_at_once(tmp_path, second, field):
  port = _free_port()
  shared = [f"--coordinator_address=localhost:{port}", "--num_processes=2", "--initialization_timeout=120"]
  processes = [
    subprocess.Popen(
      [
        sys.executable,
        "train.py",
        f"--workdir={tmp_path}/run",
        *FLAGS,
        *shared,
        f"--process_id={index}",
        *extra,
      ],
      cwd=REPO_ROOT,
      env=_env(1),
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for index, extra in enumerate([[], [flag.format(tmp=tmp_path) for flag in second]])
  ]
  try:
    for process in processes:
      _, stderr = process.communicate(timeout=240)
      assert process.returncode == 2, stderr[-3000:]
      assert "the processes of this run differ" in stderr and field in stderr and "Traceback" not in stderr
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(400)
def test_a_peer_that_dies_mid_run_stops_the_survivor_at_once_with_one_line(tmp_path):
  port = _free_port()
  processes = [
    subprocess.Popen(
      [
        sys.executable,
        "train.py",
        f"--workdir={tmp_path}",
        *FLAGS,
        "--config.num_train_steps=100000",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        f"--process_id={index}",
      ],
      cwd=REPO_ROOT,
      env=_env(1),
      stdout=subprocess.PIPE if index == 0 else subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for index in range(2)
  ]
  survivor, victim = processes
  try:
    assert any(line.startswith("step 3/") for line in survivor.stdout), "training did not start"
    victim.kill()
    killed = time.monotonic()
    _, stderr = survivor.communicate(timeout=120)
    assert survivor.returncode == 1 and time.monotonic() - killed < 60, stderr[-3000:]
    [line] = stderr.strip().splitlines()
    assert line.startswith("train.py: another process failed or died")
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
      process.communicate()
