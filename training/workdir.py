"""The run directory, checked at start and locked for the whole run.

`lock` creates the workdir and takes an advisory `fcntl.flock` on ``workdir/.lock``: a second run on
the same workdir is refused, naming the process that holds it. The OS releases the lock when the
holding process ends, however it ends (a SIGKILL included), so a dead run never leaves a stale lock.
With several processes, process 0 takes the lock and the others check that the workdir they were given
holds process 0's lock (`training.distributed.check_same_run`).
"""

import fcntl
import os
import socket
import uuid
from pathlib import Path
from typing import IO

from training.errors import ConfigError

LOCK_FILE = ".lock"


def lock(workdir: str | os.PathLike) -> tuple[IO, str]:
  """Creates ``workdir`` if needed and locks it until the process ends.

  Returns:
    The open lock file (keep it open: closing it releases the lock) and the holder's description
    (``pid 123 on host h, run <uuid>``), also written into the file.

  Raises:
    ConfigError: when the workdir cannot be created or written, or another process holds its lock.
  """
  path = Path(workdir) / LOCK_FILE
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    file = path.open("a+")
  except OSError as error:
    raise ConfigError(
      f"--workdir={workdir} cannot be created or written ({error.strerror}: {error.filename})."
    ) from None
  try:
    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    file.seek(0)
    holder = file.read().strip() or "a process that has not written its name yet"
    file.close()
    raise ConfigError(
      f"--workdir={workdir} is in use by another run ({holder}); wait for it to end or use another --workdir."
    ) from None
  holder = f"pid {os.getpid()} on host {socket.gethostname()}, run {uuid.uuid4().hex[:12]}"
  file.truncate(0)
  file.write(holder + "\n")
  file.flush()
  return file, holder


def holder(workdir: str | os.PathLike) -> str | None:
  """What the lock file of ``workdir`` says about its holder, None when there is none."""
  try:
    return (Path(workdir) / LOCK_FILE).read_text().strip()
  except OSError:
    return None
