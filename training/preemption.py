"""SIGTERM (preemption notice) or Ctrl-C → stop at a step every process agrees on, save, exit 75.

train.py calls `install` before JAX is imported: from then on either signal only sets a flag (no
`KeyboardInterrupt` inside JAX or Orbax start-up), read by the loop before each step; a signal during the
final save lets it complete. A second Ctrl-C exits at once (130). With several processes the flag is
OR-ed over processes every ``sync_every_steps`` steps, so all stop after the same step.
"""

import os
import signal
import threading

from training.errors import ExitCode

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # The stop signals received since `install` (or the handler's entry).


def _handle(signum: int, frame: object) -> None:
  if signum == signal.SIGINT and signal.SIGINT in _received:
    os.write(2, b"train.py: interrupted again: stopped at once; the checkpoints written so far are kept.\n")
    os._exit(ExitCode.INTERRUPTED)
  _received.append(signum)


def install() -> None:
  """Turns SIGTERM and SIGINT into stop requests for the rest of the process (main thread only)."""
  for signum in _SIGNALS:
    signal.signal(signum, _handle)


def requested() -> bool:
  """Whether this process received a stop signal."""
  return bool(_received)


class PreemptionHandler:
  """The loop's view of the stop requests; installs the handlers for its duration where train.py did not."""

  def __init__(self, *, sync_every_steps: int = 10):
    self._sync_every_steps = sync_every_steps
    self._previous: dict[int, object] = {}

  def __enter__(self) -> "PreemptionHandler":
    if threading.current_thread() is threading.main_thread():
      self._previous = {signum: signal.signal(signum, _handle) for signum in _SIGNALS}
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    if self._previous.get(signal.SIGINT) is not _handle:
      _received.clear()  # Not under train.py (a notebook): the next run starts afresh.

  def should_stop(self, step: int) -> bool:
    """Whether to stop before ``step`` (steps done); the same answer on every process."""
    import jax  # Here, not at the top: `install` runs before JAX is imported.
    import numpy as np
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
      return requested()
    if step % self._sync_every_steps:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.int32(requested()))))
