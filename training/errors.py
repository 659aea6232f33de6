"""The exceptions and exit statuses of train.py, so that schedulers can requeue correctly.

=========  ===================================================================================
status     meaning
=========  ===================================================================================
0          finished: every step trained and the final checkpoint written.
1          failed: a bug (traceback), or a run that went wrong (`TrainingError`: non-finite loss
           or parameters, no usable checkpoint); nothing non-finite was saved.
2          bad usage (`ConfigError`): a flag, config field or value, or missing data; one message
           naming what to fix, printed before anything is created.
75         preempted (EX_TEMPFAIL from sysexits.h): SIGTERM or SIGINT, state saved; run the same
           command again to resume.
=========  ===================================================================================
"""

import enum


class ExitCode(enum.IntEnum):
  """Process exit statuses of train.py (see the module docstring)."""

  FINISHED = 0
  ERROR = 1
  USAGE = 2
  PREEMPTED = 75


class ConfigError(ValueError):
  """A user error in the command line or the config: train.py prints it alone and exits 2."""


class TrainingError(RuntimeError):
  """A run that cannot go on (non-finite training, no usable checkpoint): train.py exits 1."""
