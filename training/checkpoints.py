"""Checkpoints of the training state with Orbax: periodic and final, atomic, verified, the last K kept.

A checkpoint holds the `TrainState` as host arrays (data order and dropout keys follow from the seed and
the step). Orbax renames a checkpoint into place when complete; saves run in the background, and one that
fails (a full disk) stops the run with one `TrainingError` naming the step, directory and OS error.
Nothing non-finite is written. Each checkpoint records a CRC-32 of every array in its step metadata, and
the record is required, so damage to it cannot turn verification off. A checkpoint that fails to load or
verify is renamed ``N.corrupt-<reason>`` (never deleted) with a warning, and the next older one is tried.
"""

import logging as logging_lib
import os
import re
import sys
import zlib
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from training.errors import TrainingError
from training.steps import TrainState

_CHECKSUM_KEY = "lars_optax_crc32"  # custom_metadata field: {leaf path: CRC-32 of its bytes}.


def _leaves(tree: Any) -> dict[str, Any]:
  """The leaves of a state dict (or of Orbax's tree metadata) by path (``params/conv1/kernel``)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(keys, simple=True, separator="/"): leaf for keys, leaf in flat}


def checksums(tree: Any) -> dict[str, int]:
  """CRC-32 of the bytes of every array of ``tree``, by path."""
  return {path: zlib.crc32(np.ascontiguousarray(leaf).tobytes()) for path, leaf in _leaves(tree).items()}


def nonfinite_leaves(tree: Any) -> list[str]:
  """The paths of the floating-point arrays of ``tree`` that hold a NaN or an infinity."""
  leaves = {path: np.asarray(leaf) for path, leaf in _leaves(tree).items()}
  return [p for p, x in leaves.items() if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x))]


def _first(paths: list[str]) -> str:
  return f"{', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}"


def _verify(restored: Any, recorded: Any) -> str | None:
  """Why ``restored`` is unusable (a short reason), or None when it is finite and matches its CRCs."""
  if not isinstance(recorded, dict) or not recorded:
    return "no readable checksum record (damaged, or written by a train.py older than checksums)"
  bad = nonfinite_leaves(restored)
  if bad:
    return f"non-finite values in {_first(bad)}"
  actual = checksums(restored)
  wrong = sorted(path for path in actual.keys() | recorded.keys() if actual.get(path) != recorded.get(path))
  return f"checksum mismatch in {_first(wrong)}" if wrong else None


def _structure(tree: Any) -> dict[str, tuple]:
  return {path: (tuple(leaf.shape), np.dtype(leaf.dtype).name) for path, leaf in _leaves(tree).items()}


def _all_processes_agree(ok: bool) -> bool:  # Each process verifies what it read itself.
  return ok if jax.process_count() == 1 else bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _slug(reason: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", re.split(r" in |[:(]", reason.lower())[0]).strip("-")[:40] or "unknown"


def _os_reason(error: Exception) -> str:
  """The OS error behind a failed save ("No space left on device"), else the error's first line."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  return str(error).split(" [os_error_code")[0].rsplit(": ", 1)[-1].splitlines()[0][:300]


def ignore_abandoned_io() -> None:
  """Silences the TensorStore operations that a failed save or restore leaves in flight (train.py calls it).

  Each reports "Event loop is closed" (unraisable) or an exception never retrieved: dozens of tracebacks.
  """
  logging_lib.getLogger("asyncio").addFilter(lambda r: "exception was never retrieved" not in r.getMessage())
  previous = sys.unraisablehook
  sys.unraisablehook = lambda u: None if str(u.exc_value) == "Event loop is closed" else previous(u)


def has_checkpoints(directory: str | os.PathLike) -> bool:
  """Whether ``directory`` holds a step directory (complete or not) that a run would resume from."""
  return Path(directory).is_dir() and any(p.name.isdigit() for p in Path(directory).iterdir())


class Checkpointer:
  """Saves and restores `TrainState` in ``directory`` (a step number per checkpoint)."""

  def __init__(self, directory: str | os.PathLike, *, every_steps: int, keep: int):
    """Opens or creates ``directory``; saves every ``every_steps`` steps (0: forced only), keeps ``keep``."""
    self.directory = Path(os.path.abspath(directory))
    self._every_steps = every_steps
    self._saving: int | None = None  # The step of the save in flight.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    handler = ocp.StandardCheckpointHandler()
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handler)

  def is_due(self, step: int) -> bool:
    """Whether `save` would write a periodic checkpoint at ``step``."""
    return self._every_steps > 0 and step % self._every_steps == 0 and step != self._manager.latest_step()

  def _set_aside(self, bad: list[tuple[int, str]]) -> None:
    """Renames the checkpoints ``bad`` (step, reason) out of Orbax's sight (process 0, once all read)."""
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoints read")
    for step, reason in bad if jax.process_index() == 0 else []:
      target, suffix = self.directory / f"{step}.corrupt-{_slug(reason)}", 1
      while target.exists():
        suffix += 1
        target = self.directory / f"{step}.corrupt-{_slug(reason)}.{suffix}"
      os.rename(self.directory / str(step), target)
      logging.warning(
        "Checkpoint %s is unusable (%s): set aside as %s.", self.directory / str(step), reason, target
      )
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("checkpoints set aside")
    self._manager.reload()

  def _try_restore(self, step: int, template: dict) -> tuple[Any, str | None]:
    """Restores ``step``; returns (the state dict or None, why it is unusable or None)."""
    if not (self.directory / str(step) / "default").is_dir():
      return None, "no default/ item directory"
    try:
      stored = _structure(self._manager.item_metadata(step).tree)
    except Exception as error:  # Any failure to read the metadata means damage.
      return None, f"unreadable metadata: {type(error).__name__}: {str(error)[:200]}"
    expected = _structure(template)
    if stored != expected:
      differences = sorted(set(stored.items()) ^ set(expected.items()))[:3]
      raise TrainingError(
        f"The checkpoint {self.directory / str(step)} was written with another model or optimizer (first "
        f"differences, path: (shape, dtype): {differences}). Use a new --workdir."
      )
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(template))
      custom = self._manager.metadata(step).custom_metadata or {}
    except Exception as error:  # Orbax and TensorStore raise many kinds on damage.
      return None, f"restore failed: {type(error).__name__}: {str(error)[:200]}"
    return restored, _verify(restored, custom.get(_CHECKSUM_KEY))

  def restore_latest(self, target: TrainState) -> TrainState:
    """The newest good checkpoint, with the structure and dtypes of ``target``; ``target`` without one.

    Raises:
      TrainingError: when none restores and verifies (nothing renamed), or one holds another structure.
    """
    template = flax.serialization.to_state_dict(jax.device_get(target))
    known = set(self._manager.all_steps())  # Orbax does not list a step without its commit marker.
    found = {int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir()}
    incomplete = [(step, "incomplete") for step in sorted(found - known)]
    failures = []
    for step in sorted(known, reverse=True):
      restored, reason = self._try_restore(step, template)
      if not _all_processes_agree(reason is None):
        failures.append((step, reason or "failed verification on another process"))
        continue
      self._set_aside(failures + incomplete)
      return flax.serialization.from_state_dict(target, restored)
    if failures:
      listing = "; ".join(f"step {step}: {reason}" for step, reason in failures)
      raise TrainingError(
        f"No usable checkpoint in {self.directory} ({listing}). Nothing was renamed; move the "
        "directory away to start from scratch."
      )
    self._set_aside(incomplete)
    return target

  def _check_saved(self, call=None) -> None:
    """Raises the failure of the save in flight (or of ``call``) as one `TrainingError`."""
    try:
      self._manager.check_for_errors() if call is None else call()
    except Exception as error:  # TensorStore reports a full disk as a ValueError.
      raise TrainingError(
        f"Saving the checkpoint of step {self._saving} in {self.directory} failed: {_os_reason(error)}. "
        "The checkpoints written before are kept; fix the cause and run the same command to resume."
      ) from None

  def save(self, step: int, state: TrainState, *, force: bool = False) -> bool:
    """Saves ``state`` (at ``step``) when the step is periodic or ``force``; returns whether it did.

    Raises:
      TrainingError: if ``state`` is not finite (nothing is written), or this or an earlier save failed.
    """
    self._check_saved()
    if not (self.is_due(step) or force) or step == self._manager.latest_step():
      return False
    host_state = flax.serialization.to_state_dict(jax.device_get(state))
    bad = nonfinite_leaves(host_state)
    if bad:
      raise TrainingError(f"Refusing to checkpoint a non-finite state at step {step} ({_first(bad)}).")
    self._check_saved(self._manager.wait_until_finished)  # The previous save, if still in flight.
    self._saving = step
    custom = {_CHECKSUM_KEY: checksums(host_state)}
    args = ocp.args.StandardSave(host_state)
    self._check_saved(lambda: self._manager.save(step, args=args, force=True, custom_metadata=custom))
    return True

  def close(self) -> None:
    """Waits for pending saves to be committed (`TrainingError` if one failed), then releases the manager."""
    try:
      self._check_saved(self._manager.wait_until_finished)
    finally:
      self._check_saved(self._manager.close)  # Which waits again: the same error, not a second kind.
