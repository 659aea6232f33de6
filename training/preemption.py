"""SIGTERM (preemption notice) or Ctrl-C → stop at a step every process agrees on, save, exit 75.

Cloud schedulers send SIGTERM some seconds before they kill a preempted machine; a user presses Ctrl-C
(SIGINT). train.py calls `install` first, before JAX is imported: from then on either signal only sets a
flag (no `KeyboardInterrupt` inside JAX or Orbax start-up, which can crash the interpreter). The training
loop asks `PreemptionHandler.should_stop` before each step, including the first; a signal during the
final save lets the save complete. A second Ctrl-C ends the process at once with status 130 and one
line, saving nothing more (the checkpoints already written are kept). With several processes the flag
is combined over processes (a logical OR through `multihost_utils.process_allgather`) every
``sync_every_steps`` steps, so all hosts stop after the same step and save the same checkpoint even
though the signal reaches them at different times.
"""

import os
import signal
import threading

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # The stop signals received since `install` (or the handler's entry).


def _handle(signum: int, frame: object) -> None:
  del frame
  if signum == signal.SIGINT and signal.SIGINT in _received:
    os.write(2, b"train.py: interrupted again: stopped at once; the checkpoints written so far are kept.\n")
    os._exit(130)  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C.
  _received.append(signum)


def install() -> None:
  """Turns SIGTERM and SIGINT into stop requests for the rest of the process (main thread only)."""
  for signum in _SIGNALS:
    signal.signal(signum, _handle)


def requested() -> bool:
  """Whether this process received a stop signal."""
  return bool(_received)


class PreemptionHandler:
  """Context manager for the training loop: SIGTERM and SIGINT become a stop at a synchronised step.

  Where train.py's `install` has not run (a notebook), it installs the handlers for its duration.
  """

  def __init__(self, *, sync_every_steps: int = 10):
    """Args: sync_every_steps: steps between the cross-process checks (multi-process runs only)."""
    self._sync_every_steps = sync_every_steps
    self._previous: dict[int, object] = {}

  @property
  def requested(self) -> bool:
    """Whether this process received a stop signal."""
    return requested()

  def __enter__(self) -> "PreemptionHandler":
    if threading.current_thread() is threading.main_thread():
      self._previous = {signum: signal.signal(signum, _handle) for signum in _SIGNALS}
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    if self._previous.get(signal.SIGINT) is not _handle:
      _received.clear()  # Not under train.py: the next run in this process starts afresh.

  def should_stop(self, step: int) -> bool:
    """Whether to stop before ``step`` (steps done); the same answer on every process."""
    import jax  # Here, not at the top: `install` runs before JAX is imported.
    import numpy as np
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
      return requested()
    if step % self._sync_every_steps:
      return False
    flags = multihost_utils.process_allgather(np.asarray(requested(), np.int32))
    return bool(np.any(flags))
