r"""Trains a model of models/ with lars_optax: from one CPU to a TPU pod, resumable.

Usage:
  python train.py  # digits, small AlexNet-BN, LARS (32 s wall on 2 shared Intel Xeon cores, load 1-2)
  python train.py --config=configs/resnet50_lars.py:32768 --config.data_dir=$TFDS_DATA_DIR \
      --workdir=/tmp/resnet50_32k
  python train.py --config=configs/default.py --config.optimizer=sgd --config.learning_rate=0.1

Multi-host GPU/CPU clusters: run one process per host with --coordinator_address=HOST:PORT,
--num_processes=N and --process_id=i (TPU pods need none of them). Each process feeds its local devices
from its own shard of every batch; only process 0 writes logs.

Running again with the same --workdir resumes from its latest good checkpoint, with the config recorded
in workdir/config.json (--allow_config_change to alter the trajectory anyway).

Exit status: 0 finished; 75 preempted (SIGTERM or Ctrl-C: state saved, run the same command again to
resume); 1 failed (non-finite training, no usable checkpoint, a peer that did not join, or a bug);
2 bad usage (a flag, config field or value, or missing data: one message, nothing created).
"""

import datetime
import functools
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from training import cli, distributed
from training.errors import ConfigError, ExitCode, TrainingError
from training.loop import train_and_evaluate

__all__ = ["train_and_evaluate"]

_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Directory for checkpoints and logs (default: workdir/<config>-<time> in the current directory).",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "HOST:PORT of process 0, for jax.distributed (multi-host GPU/CPU)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process, in [0, num_processes).")
_INIT_TIMEOUT = flags.DEFINE_integer(
  "initialization_timeout",
  300,
  "Seconds to wait for all --num_processes processes to join jax.distributed before failing.",
  lower_bound=1,
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  "allow_config_change",
  False,
  "Resume even if the config differs from workdir/config.json in a field that alters the trajectory.",
)


def _define_config(argv: list[str]) -> None:
  """--config (see cli.parse_flags for why it is defined at parse time)."""
  config_flags.DEFINE_config_file(
    "config",
    os.fspath(cli.DEFAULT_CONFIG),
    "Training configuration file (configs/*.py), with :ARG for a batch size where it takes one.",
    lock_config=True,
    sys_argv=argv,
  )


def _default_workdir() -> str:
  filename = config_flags.get_config_filename(flags.FLAGS["config"])
  name = os.path.splitext(os.path.basename(filename))[0]
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return os.path.join("workdir", f"{name}-{stamp}")


def main(argv: list[str]) -> int:
  try:
    if len(argv) > 1:
      raise ConfigError(
        f"unexpected arguments {argv[1:]}: every setting is a --flag or --config.FIELD=VALUE."
      )
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows it.
    if _COORDINATOR.value is not None or _NUM_PROCESSES.value is not None:
      if _WORKDIR.value is None:
        raise ConfigError("--workdir is required with several processes (all must share it).")
      try:
        distributed.initialize(
          coordinator_address=_COORDINATOR.value,
          num_processes=_NUM_PROCESSES.value,
          process_id=_PROCESS_ID.value,
          timeout_s=_INIT_TIMEOUT.value,
          workdir=_WORKDIR.value,
        )
      except TrainingError as error:
        print(f"train.py: {error}", file=sys.stderr, flush=True)
        os._exit(ExitCode.ERROR)  # jax.distributed's shutdown would wait for the missing peers again.
    logging.info("JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
    summary = train_and_evaluate(
      flags.FLAGS["config"].value,
      _WORKDIR.value or _default_workdir(),
      allow_config_change=_ALLOW_CONFIG_CHANGE.value,
    )
  except ConfigError as error:
    cli.fail(str(error))
  except TrainingError as error:
    print(f"train.py: {error}", file=sys.stderr, flush=True)
    return ExitCode.ERROR
  return ExitCode.PREEMPTED if summary["preempted"] else ExitCode.FINISHED


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=functools.partial(cli.parse_flags, define_config=_define_config, usage=__doc__))
