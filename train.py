r"""Trains a model of models/ with lars_optax: from one CPU to a TPU pod, resumable.

Usage:
  python train.py  # digits, small AlexNet-BN, LARS
  python train.py --config=configs/resnet50_lars.py:32768 --config.data_dir=$TFDS_DATA_DIR \
      --workdir=/tmp/resnet50_32k

Multi-host GPU/CPU clusters: one process per host with --coordinator_address=HOST:PORT,
--num_processes=N and --process_id=i, all with the same flags and --workdir (checked at start; TPU
pods need none). If a process dies the others exit 1 when a collective fails, or, if one hangs, JAX
aborts them (SIGABRT: status 134) once the dead one has missed 20 s of heartbeats.

Running again with the same --workdir resumes from its latest good checkpoint, with the config
recorded in workdir/config.json (--allow_config_change to alter the trajectory anyway); a workdir is
locked while a run uses it. Exit status: 0 finished; 75 stopped by SIGTERM or Ctrl-C (run the same
command to resume); 130 a second Ctrl-C; 1 failed (non-finite training, no usable checkpoint, a
failed save, a bug); 2 bad usage (a flag, config field or value, missing data, a workdir in use or
not writable: one message).
"""

import datetime
import functools
import logging as logging_lib
import os
import sys

from training import preemption

if __name__ == "__main__":
  preemption.install()  # Before JAX starts: from now on SIGINT and SIGTERM only request a stop.

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from training import checkpoints, cli, distributed, run_config, workdir
from training.errors import ConfigError, ExitCode, TrainingError
from training.loop import train_and_evaluate

_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and logs (default: workdir/<config>-<time>).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process, in [0, num_processes).", lower_bound=0)
flags.register_multi_flags_validator(
  ["process_id", "num_processes"],
  lambda f: None in (f["process_id"], f["num_processes"]) or f["process_id"] < f["num_processes"],
  "--process_id must be less than --num_processes.",
)
_INIT_TIMEOUT = flags.DEFINE_integer("initialization_timeout", 300, "Seconds to join.", lower_bound=1)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool("allow_config_change", False, "Resume despite a config change.")


def _define_config(argv: list[str]) -> None:
  """--config (see cli.parse_flags for why it is defined at parse time)."""
  description = "Training configuration file (configs/*.py), with :ARG for a batch size where it takes one."
  default = os.fspath(cli.DEFAULT_CONFIG)
  config_flags.DEFINE_config_file("config", default, description, lock_config=True, sys_argv=argv)


def _default_workdir() -> str:
  filename = config_flags.get_config_filename(flags.FLAGS["config"])
  name = os.path.splitext(os.path.basename(filename))[0]
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return os.path.join("workdir", f"{name}-{stamp}")


def _start(path: str) -> object:
  """Joins the other processes (if any), locks the workdir and checks that all processes share it."""
  if _COORDINATOR.value is not None or _NUM_PROCESSES.value is not None:
    if _WORKDIR.value is None:
      raise ConfigError("--workdir is required with several processes (all must share it).")
    distributed.initialize(
      coordinator_address=_COORDINATOR.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value,
      timeout_s=_INIT_TIMEOUT.value,
    )
  lock, error = None, None
  try:
    lock = workdir.lock(path) if jax.process_index() == 0 else None
  except ConfigError as failure:
    error = str(failure)
  if jax.process_count() > 1:
    config = run_config.as_json(flags.FLAGS["config"].value)
    distributed.check_same_run(config, path, error=error, timeout_s=_INIT_TIMEOUT.value)
  if error:
    raise ConfigError(error)
  return lock


def main(argv: list[str]) -> int:
  path = _WORKDIR.value or _default_workdir()
  new_workdir = not os.path.exists(path)
  try:
    if len(argv) > 1:
      raise ConfigError(f"unexpected arguments {argv[1:]}: use --flags and --config.FIELD=VALUE.")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows it.
    orbax = f"{os.sep}orbax{os.sep}"  # Orbax logs a failed save or read again, with tracebacks.
    logging.get_absl_logger().addFilter(lambda r: r.levelno < logging_lib.ERROR or orbax not in r.pathname)
    checkpoints.ignore_abandoned_io()
    _lock = _start(path)  # Held until main returns.
    summary = {"step": 0, "preempted": True}
    if not (preemption.requested() and jax.process_count() == 1):  # Else stopped before compiling.
      summary = train_and_evaluate(
        flags.FLAGS["config"].value, path, allow_config_change=_ALLOW_CONFIG_CHANGE.value
      )
  except ConfigError as error:
    if new_workdir and jax.process_index() == 0:
      workdir.discard_if_empty(path)  # Refused before anything was written: leave nothing behind.
    cli.fail(str(error))
  except (TrainingError, jax.errors.JaxRuntimeError) as error:  # The latter when a peer dies mid-step.
    if not isinstance(error, TrainingError) and jax.process_count() == 1:
      raise  # A bug: the traceback is wanted.
    peer = "" if isinstance(error, TrainingError) else "another process failed or died: "
    print(f"train.py: {peer}{str(error).strip().splitlines()[0]}", file=sys.stderr, flush=True)
    if jax.process_count() > 1 or _NUM_PROCESSES.value:
      sys.stdout.flush()
      os._exit(ExitCode.ERROR)  # jax.distributed's shutdown would wait for the missing or dead peers.
    return ExitCode.ERROR
  if not (summary["preempted"] or preemption.requested()):
    return ExitCode.FINISHED
  step = summary["step"]
  done = f"at step {step}: saved" if step else "before the first step: nothing new to save"
  print(f"train.py: interrupted {done}; run the same command to resume.", file=sys.stderr, flush=True)
  return ExitCode.PREEMPTED


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=functools.partial(cli.parse_flags, define_config=_define_config, usage=__doc__))
