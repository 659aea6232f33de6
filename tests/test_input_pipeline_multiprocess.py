"""Two JAX processes on localhost (gloo collectives): masked evaluation is exact across processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import input_pipeline_testing as testing
import input_pipeline_testing_multiprocess as worker
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import input_pipeline

TESTS_DIR = Path(__file__).resolve().parent


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(420)
def test_two_process_masked_accuracy_equals_single_device_accuracy(tmp_path):
  testing.build(str(tmp_path))
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR)]),
  }
  port = _free_port()
  processes = [
    subprocess.Popen(
      [
        sys.executable,
        str(TESTS_DIR / "input_pipeline_testing_multiprocess.py"),
        str(port),
        str(i),
        str(tmp_path),
      ],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = []
  try:
    for process in processes:
      stdout, stderr = process.communicate(timeout=360)
      assert process.returncode == 0, stderr[-4000:]
      outputs.append(json.loads(stdout.strip().splitlines()[-1]))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()

  # Unpadded, single device: the same classifiers on the plain test arrays.
  _, _, x_test, y_test = input_pipeline.load_arrays("digits")
  predictions = jax.jit(worker.nearest_centroid)(x_test, jnp.asarray(worker.digits_centroids()))
  digits_correct = int(np.sum(np.asarray(predictions) == y_test))
  tiny_ids = range(testing.NUM_TRAIN, testing.NUM_TRAIN + testing.NUM_EVAL)
  tiny_correct = sum(testing.label(i) == testing.colour(i) for i in tiny_ids)

  assert sorted(output["process_index"] for output in outputs) == [0, 1]
  for output in outputs:  # psum results are global, hence equal on both processes.
    assert output["device_count"] == 4
    assert output["digits"] == {"correct": digits_correct, "count": 359, "batches": 23}
    assert output["tiny"] == {"correct": tiny_correct, "count": 13, "batches": 4}
  assert 0.8 < digits_correct / 359 < 1.0 and tiny_correct == 10
