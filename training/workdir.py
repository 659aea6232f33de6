"""The run directory, created and locked at start for the whole run.

The lock is an advisory `fcntl.flock` on ``workdir/.lock``, which names its holder: a second run on the
workdir is refused naming it. The OS releases the lock when the holder ends, however it ends (SIGKILL
included), so a dead run never leaves a stale lock. With several processes process 0 holds it and the
others check that their --workdir names the same holder (`training.distributed.check_same_run`).
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
  """Creates and locks ``workdir``; returns the open lock file (closing it unlocks) and the holder.

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
  print(holder, file=file, flush=True)
  return file, holder


def holder(workdir: str | os.PathLike) -> str | None:
  """The holder named by the lock file of ``workdir``, None when there is none."""
  try:
    return (Path(workdir) / LOCK_FILE).read_text().strip()
  except OSError:
    return None


def discard_if_empty(workdir: str | os.PathLike) -> None:
  """Removes ``workdir`` if it holds nothing but its lock file (a run refused before writing anything)."""
  path = Path(workdir)
  if path.is_dir() and [entry.name for entry in path.iterdir()] == [LOCK_FILE]:
    (path / LOCK_FILE).unlink()
    path.rmdir()
