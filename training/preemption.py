"""SIGTERM (preemption notice) or Ctrl-C → save a checkpoint at a step every process agrees on, then exit.

Cloud schedulers send SIGTERM some seconds before they kill a preempted machine; a user presses Ctrl-C
(SIGINT). Either way the handler only sets a flag; the training loop asks `should_stop` after each
step, saves, and train.py exits with status 75 (preempted, resumable). A second Ctrl-C aborts at
once, saving nothing more (the first one restores Python's default SIGINT action). With several
processes the flag is combined over processes (a logical OR through `multihost_utils.process_allgather`) every
``sync_every_steps`` steps, so all hosts stop after the same step and save the same checkpoint even
though the signal reaches them at different times.
"""

import signal
import threading
import types

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionHandler:
  """Context manager that turns SIGTERM and SIGINT into a stop request honoured at a synchronised step."""

  def __init__(self, *, sync_every_steps: int = 10):
    """Args: sync_every_steps: steps between the cross-process checks (multi-process runs only)."""
    self._sync_every_steps = sync_every_steps
    self._requested = False
    self._previous: dict[int, object] = {}

  @property
  def requested(self) -> bool:
    """Whether this process received a stop signal."""
    return self._requested

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.SIG_DFL)  # A second Ctrl-C kills the process at once.
      logging.warning("Interrupted: saving a checkpoint and stopping (press Ctrl-C again to abort now).")
    else:
      logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    self._requested = True

  def __enter__(self) -> "PreemptionHandler":
    if threading.current_thread() is threading.main_thread():
      self._previous = {signum: signal.signal(signum, self._handle) for signum in _SIGNALS}
    else:
      logging.warning("Not in the main thread: SIGTERM and SIGINT will not trigger a checkpoint.")
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after ``step``; the same answer on every process."""
    if jax.process_count() == 1:
      return self._requested
    if step % self._sync_every_steps:
      return False
    flags = multihost_utils.process_allgather(np.asarray(self._requested, np.int32))
    return bool(np.any(flags))
