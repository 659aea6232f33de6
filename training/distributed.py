"""`jax.distributed.initialize` with a deadline, and an error that says who did not join.

Without a deadline a peer that never starts is reported minutes later as "another task died" (JAX
aborts the process from C++ when its registration barrier times out, so Python cannot catch it).
Here a watchdog ends the process after ``timeout_s`` seconds with a message naming the number of
processes expected, the coordinator and the process ids that did not start: every process leaves a
marker ``<workdir>/.processes/<id>`` (the workdir is shared by all processes) before it joins, so the
missing markers name the missing peers. JAX's own deadline is set a little later than the watchdog's.
"""

import inspect
import json
import os
import sys
import threading
import time
from pathlib import Path

import jax
from jax._src import distributed as jax_distributed  # The key-value store (as multihost_utils uses it).

from training import run_config
from training import workdir as workdir_lib
from training.errors import ConfigError, ExitCode, TrainingError

_MARKERS = ".processes"
_JAX_GRACE_S = 15  # JAX's initialization_timeout is the watchdog's plus this.
_HEARTBEAT_S = 20  # A peer silent this long is dead: JAX stops the others (see train.py's docstring).
_KEY = "lars_optax/run"


def _started_peers(markers: Path, since: float) -> list[int]:
  """The process ids whose marker was written after ``since`` (older markers are from earlier runs)."""
  if not markers.is_dir():
    return []
  return sorted(int(p.name) for p in markers.iterdir() if p.name.isdigit() and p.stat().st_mtime >= since)


def describe_missing(
  *, coordinator_address: str | None, num_processes: int, process_id: int, started: list[int], timeout_s: int
) -> str:
  """The error message of a join that timed out."""
  missing = sorted(set(range(num_processes)) - set(started) - {process_id})
  who = (
    f"process(es) {missing} did not start"
    if missing
    else "every process started, but not all reached the coordinator"
  )
  return (
    f"Not all {num_processes} processes joined jax.distributed within {timeout_s} s "
    f"(--initialization_timeout): {who} (coordinator {coordinator_address}, this is process {process_id}). "
    "Start the same command on every host, each with its own --process_id, the same "
    "--coordinator_address (reachable from every host) and the same --workdir."
  )


def initialize(
  *,
  coordinator_address: str | None,
  num_processes: int,
  process_id: int,
  timeout_s: int,
  workdir: str | os.PathLike,
) -> None:
  """Joins the ``num_processes`` processes of this run, waiting at most ``timeout_s`` seconds.

  On time-out the process prints `describe_missing` to stderr and exits with status 1 at once.

  Raises:
    TrainingError: when JAX reports a failure to join (with the same description).
  """
  markers = Path(workdir) / _MARKERS
  markers.mkdir(parents=True, exist_ok=True)
  marker = markers / str(process_id)
  marker.write_text(f"{os.getpid()}\n")
  since = time.time() - timeout_s  # Peers wait for the coordinator too: they may start this much earlier.
  joined = threading.Event()

  def describe() -> str:
    return describe_missing(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      started=_started_peers(markers, since),
      timeout_s=timeout_s,
    )

  def watchdog() -> None:
    if not joined.wait(timeout_s):
      print(f"train.py: {describe()}", file=sys.stderr, flush=True)
      os._exit(ExitCode.ERROR)  # JAX's shutdown would wait for the missing peers again.

  threading.Thread(target=watchdog, name="join-watchdog", daemon=True).start()
  kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  if "initialization_timeout" in inspect.signature(jax.distributed.initialize).parameters:
    kwargs["initialization_timeout"] = timeout_s + _JAX_GRACE_S  # seconds (jax 0.4 to 0.11)
  if "heartbeat_timeout_seconds" in inspect.signature(jax.distributed.initialize).parameters:
    kwargs["heartbeat_timeout_seconds"] = _HEARTBEAT_S
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as error:  # XlaRuntimeError, or JaxRuntimeError on newer JAX.
    joined.set()
    raise TrainingError(f"{describe()} JAX said: {str(error).strip()[:500]}") from error
  joined.set()
  marker.unlink(missing_ok=True)


def _record(config: dict, workdir: str | os.PathLike) -> dict:
  return {"config": config, "workdir": f"{os.path.abspath(workdir)} locked by {workdir_lib.holder(workdir)}"}


def check_same_run(config: dict, workdir: str | os.PathLike, *, error: str | None, timeout_s: int) -> None:
  """Raises the same `ConfigError` on every process unless all run process 0's config and workdir.

  Process 0 holds the workdir's lock (`training.workdir.lock`, which failed with ``error`` or not) and
  publishes its config and the lock's holder in jax.distributed's key-value store; each other process
  compares them with its own config and the holder named by the lock file of its own --workdir (another
  directory names another holder, or none) and reports the differing fields; process 0 publishes the
  verdict.
  """
  client, index = jax_distributed.global_state.client, jax.process_index()
  if index == 0:
    mine = {"error": error} if error else _record(config, workdir)
    client.key_value_set(f"{_KEY}/0", json.dumps(mine))
    if error:
      raise ConfigError(error)
    peers = range(1, jax.process_count())
    reports = [client.blocking_key_value_get(f"{_KEY}/{peer}", timeout_s * 1000) for peer in peers]
    verdict = next((report for report in reports if report != "ok"), "ok")
    client.key_value_set(f"{_KEY}/verdict", verdict)
  else:
    reference = json.loads(client.blocking_key_value_get(f"{_KEY}/0", timeout_s * 1000))
    if "error" in reference:
      raise ConfigError(f"process 0 could not start: {reference['error']}")
    mine = _record(config, workdir)
    differences = run_config.changes(reference, mine)
    report = "; ".join(
      f"{key}: {a!r} on process 0, {b!r} on process {index}" for key, (a, b) in differences.items()
    )
    client.key_value_set(f"{_KEY}/{index}", report or "ok")
    verdict = client.blocking_key_value_get(f"{_KEY}/verdict", timeout_s * 1000)
  if verdict != "ok":
    raise ConfigError(
      f"The processes of this run differ ({verdict}): start every process with the same flags and "
      "--workdir, only --process_id differing."
    )
