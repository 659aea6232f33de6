"""Several processes: `jax.distributed.initialize` with a deadline, and a check that all run one experiment.

A peer that never starts would be reported minutes later as "another task died" (JAX aborts the process
from C++ when its registration barrier times out, so Python cannot catch it); here a watchdog ends the
process after ``timeout_s`` seconds with a message naming the processes expected and the coordinator.
Once joined, `check_same_run` compares every process's config and workdir with process 0's. A peer that
dies later is detected by JAX's heartbeat within `HEARTBEAT_S` seconds; JAX then aborts the others.
"""

import json
import os
import sys
import threading

import jax
from jax._src import distributed as jax_distributed  # The key-value store (as multihost_utils uses it).

from training import run_config, workdir
from training.errors import ConfigError, ExitCode, TrainingError

HEARTBEAT_S = 20  # A silent peer is declared dead after this many seconds.
_KEY = "lars_optax/run"


def initialize(
  *, coordinator_address: str | None, num_processes: int, process_id: int, timeout_s: int
) -> None:
  """Joins the processes of this run; on time-out prints why and exits with status 1 at once."""
  message = (
    f"Not all {num_processes} processes joined jax.distributed within {timeout_s} s "
    f"(--initialization_timeout; coordinator {coordinator_address}, this is process {process_id}). Start "
    "the same command on every host, each with its own --process_id and the same --coordinator_address."
  )
  joined = threading.Event()

  def watchdog() -> None:
    if not joined.wait(timeout_s):
      print(f"train.py: {message}", file=sys.stderr, flush=True)
      os._exit(ExitCode.ERROR)  # JAX's shutdown would wait for the missing peers again.

  threading.Thread(target=watchdog, name="join-watchdog", daemon=True).start()
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=timeout_s + 15,  # After the watchdog's message.
      heartbeat_timeout_seconds=HEARTBEAT_S,
    )
  except Exception as error:  # XlaRuntimeError, or JaxRuntimeError on newer JAX.
    raise TrainingError(f"{message} JAX said: {str(error).strip()[:500]}") from error
  finally:
    joined.set()


def _record(config: dict, path: str | os.PathLike) -> dict:
  return {"config": config, "--workdir": f"{os.path.abspath(path)} locked by {workdir.holder(path)}"}


def check_same_run(config: dict, path: str | os.PathLike, *, error: str | None, timeout_s: int) -> None:
  """Raises the same `ConfigError` on every process unless all run process 0's config and workdir.

  Process 0 holds the workdir's lock (`training.workdir.lock`, which failed with ``error`` or not) and
  publishes its config and the lock's holder in jax.distributed's key-value store; each other process
  compares them with its own config and the holder named by the lock file of its own --workdir (another
  directory names another holder, or none) and reports the differing fields; process 0 publishes the
  verdict.
  """
  client, index, timeout_ms = jax_distributed.global_state.client, jax.process_index(), timeout_s * 1000
  if index == 0:
    client.key_value_set(f"{_KEY}/0", json.dumps({"error": error} if error else _record(config, path)))
    if error:
      raise ConfigError(error)
    peers = range(1, jax.process_count())
    reports = [client.blocking_key_value_get(f"{_KEY}/{i}", timeout_ms) for i in peers]
    verdict = next((report for report in reports if report != "ok"), "ok")
    client.key_value_set(f"{_KEY}/verdict", verdict)
  else:
    reference = json.loads(client.blocking_key_value_get(f"{_KEY}/0", timeout_ms))
    if "error" in reference:
      raise ConfigError(f"process 0 could not start: {reference['error']}")
    differences = run_config.changes(reference, _record(config, path)).items()
    report = "; ".join(f"{key}: {a!r} on process 0, {b!r} on process {index}" for key, (a, b) in differences)
    client.key_value_set(f"{_KEY}/{index}", report or "ok")
    verdict = client.blocking_key_value_get(f"{_KEY}/verdict", timeout_ms)
  if verdict != "ok":
    raise ConfigError(
      f"the processes of this run differ ({verdict}): start every process with the same flags and "
      "--workdir, only --process_id differing."
    )
