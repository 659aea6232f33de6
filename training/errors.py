"""The exceptions and exit statuses of train.py, so that schedulers can requeue correctly."""

import enum


class ExitCode(enum.IntEnum):
  """Process exit statuses of train.py."""

  FINISHED = 0  # Every step trained and the final checkpoint written.
  ERROR = 1  # A bug (traceback) or a `TrainingError`; the checkpoints written before are kept.
  USAGE = 2  # A `ConfigError`: one message naming what to fix, before training starts.
  PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): SIGTERM or SIGINT; run the same command to resume.
  INTERRUPTED = 130  # 128 + SIGINT: a second Ctrl-C stopped the run at once.


class ConfigError(ValueError):
  """A user error in the command line, the config or the workdir: train.py prints it alone and exits 2."""


class TrainingError(RuntimeError):
  """A run that cannot go on (non-finite training, no usable checkpoint, a failed save): exit 1."""
