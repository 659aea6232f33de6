"""Checkpoints on a real Orbax directory: damage of every kind is detected, set aside and fallen back from.

Three checkpoints (steps 2, 4, 6) of a small state are written once per test; the newest is damaged
the way disks and people damage files, and `restore_latest` must return step 4, bit for bit, rename
step 6 (never delete it) and name it in a warning.
"""

import json
import shutil
import sys
from pathlib import Path

import flax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from training import checkpoints
from training.errors import TrainingError
from training.steps import TrainState


@pytest.fixture(autouse=True)
def _abandoned_io(monkeypatch):
  """As train.py does: a damaged checkpoint's abandoned reads are not reported as errors."""
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # Restored after the test.
  checkpoints.ignore_abandoned_io()


def _state(step: int) -> TrainState:
  rng = np.random.default_rng(step)
  return TrainState(
    step=jnp.asarray(step, jnp.int32),
    params={
      "dense": {
        "kernel": rng.standard_normal((128, 256)).astype(np.float32),
        "bias": np.zeros(256, np.float32),
      }
    },
    batch_stats={},
    opt_state={"momentum": {"dense": {"kernel": np.full((128, 256), 0.1 * step, np.float32)}}},
    skipped_steps=jnp.zeros((), jnp.int32),
  )


def _target() -> TrainState:
  return _state(0)


def _write(directory: Path, steps=(2, 4, 6), keep: int = 3) -> None:
  checkpointer = checkpoints.Checkpointer(directory, every_steps=2, keep=keep)
  for step in steps:
    assert checkpointer.save(step, _state(step))
  checkpointer.close()


def _largest_data_file(step_dir: Path) -> Path:
  return max((p for p in step_dir.rglob("d/*") if p.is_file()), key=lambda p: p.stat().st_size)


def _overwrite_middle(step_dir: Path) -> None:
  path = _largest_data_file(step_dir)
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle : middle + 64] = b"\x7f" * 64  # Same size; float32 0x7f7f7f7f = 3.4e38.
  path.write_bytes(bytes(data))


def _truncate(step_dir: Path) -> None:
  path = _largest_data_file(step_dir)
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _delete_default(step_dir: Path) -> None:
  shutil.rmtree(step_dir / "default")


def _empty(step_dir: Path) -> None:
  shutil.rmtree(step_dir)
  step_dir.mkdir()


def _delete_manifests(step_dir: Path) -> None:
  for path in step_dir.rglob("manifest.ocdbt"):
    path.unlink()


def _delete_data_files(step_dir: Path) -> None:
  for path in step_dir.rglob("d/*"):
    path.unlink()


def _checksum_record_and_data(damage_record):
  """Damages the checksum record (as ``damage_record`` does) and one data file: both must be caught."""

  def damage(step_dir: Path) -> None:
    metadata = step_dir / "_CHECKPOINT_METADATA"
    damage_record(metadata)
    _overwrite_middle(step_dir)

  return damage


def _drop_custom_metadata(metadata: Path) -> None:
  record = json.loads(metadata.read_text())
  del record["custom_metadata"]
  metadata.write_text(json.dumps(record))


DAMAGE = {
  "record-garbled-and-data": _checksum_record_and_data(lambda m: m.write_bytes(b"\x00garbled{")),
  "record-deleted-and-data": _checksum_record_and_data(Path.unlink),
  "record-dropped-and-data": _checksum_record_and_data(_drop_custom_metadata),
  "overwritten-mid-file": _overwrite_middle,
  "truncated": _truncate,
  "default-deleted": _delete_default,
  "emptied": _empty,
  "manifests-deleted": _delete_manifests,
  "data-files-deleted": _delete_data_files,
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
  directory = tmp_path_factory.mktemp("pristine") / "checkpoints"
  _write(directory)
  return directory


def _assert_states_equal(actual: TrainState, expected: TrainState) -> None:
  for a, b in zip(
    checkpoints._leaves(actual.__dict__).values(),
    checkpoints._leaves(expected.__dict__).values(),
    strict=True,
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_restored(
  pristine, tmp_path, damage, monkeypatch
):
  directory = tmp_path / "checkpoints"
  shutil.copytree(pristine, directory)
  DAMAGE[damage](directory / "6")
  warnings = []
  monkeypatch.setattr(checkpoints.logging, "warning", lambda msg, *args: warnings.append(msg % args))

  checkpointer = checkpoints.Checkpointer(directory, every_steps=2, keep=3)
  restored = checkpointer.restore_latest(_target())
  assert int(restored.step) == 4
  _assert_states_equal(restored, _state(4))
  # Set aside, not deleted, out of Orbax's sight; the warning names it.
  assert not (directory / "6").exists()
  [aside] = directory.glob("6.corrupt-*")
  assert any(str(aside) in warning and str(directory / "6") in warning for warning in warnings), warnings
  assert checkpointer._manager.latest_step() == 4
  # Training goes on: the next save at step 6 is a new, good checkpoint.
  assert checkpointer.save(6, _state(6))
  checkpointer.close()
  again = checkpoints.Checkpointer(directory, every_steps=2, keep=3)
  _assert_states_equal(again.restore_latest(_target()), _state(6))
  again.close()


def test_all_checkpoints_damaged_is_an_error_naming_the_directory_and_renames_nothing(pristine, tmp_path):
  directory = tmp_path / "checkpoints"
  shutil.copytree(pristine, directory)
  for step in (2, 4, 6):
    _overwrite_middle(directory / str(step))
  checkpointer = checkpoints.Checkpointer(directory, every_steps=2, keep=3)
  with pytest.raises(TrainingError, match=rf"No usable checkpoint in {directory}.*step 6: checksum mismatch"):
    checkpointer.restore_latest(_target())
  checkpointer.close()
  assert sorted(p.name for p in directory.iterdir()) == ["2", "4", "6"]


def test_nothing_non_finite_is_saved_and_a_nonfinite_checkpoint_is_not_restored(tmp_path):
  directory = tmp_path / "checkpoints"
  _write(directory, steps=(2,))
  bad = _state(4)
  bad.params["dense"]["bias"][3] = np.nan
  checkpointer = checkpoints.Checkpointer(directory, every_steps=2, keep=3)
  with pytest.raises(TrainingError, match=r"non-finite state at step 4 \(params/dense/bias\)"):
    checkpointer.save(4, bad)
  checkpointer.close()
  assert sorted(p.name for p in directory.iterdir()) == ["2"]


def test_checkpoint_of_another_model_is_an_error_not_damage(pristine, tmp_path):
  directory = tmp_path / "checkpoints"
  shutil.copytree(pristine, directory)
  other = _state(0).replace(params={"dense": {"kernel": np.zeros((128, 10), np.float32)}})
  checkpointer = checkpoints.Checkpointer(directory, every_steps=2, keep=3)
  with pytest.raises(TrainingError, match="another model or optimizer"):
    checkpointer.restore_latest(other)
  checkpointer.close()
  assert sorted(p.name for p in directory.iterdir()) == ["2", "4", "6"]


def test_rotation_keeps_the_last_k(tmp_path):
  directory = tmp_path / "checkpoints"
  _write(directory, steps=(2, 4, 6, 8), keep=2)
  assert sorted(int(p.name) for p in directory.iterdir()) == [6, 8]


def test_checkpoint_without_checksums_is_set_aside_as_damaged_or_older(tmp_path, monkeypatch):
  """A checkpoint written by plain Orbax (no checksum record) is never trusted, and the warning says why."""
  directory = tmp_path / "checkpoints"
  _write(directory, steps=(2,))
  manager = ocp.CheckpointManager(directory)
  manager.save(4, args=ocp.args.StandardSave(flax.serialization.to_state_dict(_state(4))))
  manager.close()
  warnings = []
  monkeypatch.setattr(checkpoints.logging, "warning", lambda msg, *args: warnings.append(msg % args))
  checkpointer = checkpoints.Checkpointer(directory, every_steps=2, keep=3)
  restored = checkpointer.restore_latest(_target())
  checkpointer.close()
  assert int(restored.step) == 2
  assert sorted(p.name for p in directory.iterdir()) == ["2", "4.corrupt-no-readable-checksum-record"]
  assert any("older than checksums" in warning for warning in warnings), warnings


def _no_space_left(*args, **kwargs):
  raise ValueError(  # As TensorStore reports a full disk.
    'RESOURCE_EXHAUSTED: Error writing "a/0" in OCDBT database: Failed to write 178048 bytes to file 11: '
    "No space left on device [os_error_code='28']"
  )


# The Orbax call that fails, and where train.py sees it: the save itself, the next step (a background
# write failed), or the final wait.
@pytest.mark.parametrize("failing", ["save", "check_for_errors", "wait_until_finished"])
def test_a_failed_save_is_one_error_naming_step_directory_and_os_error(tmp_path, monkeypatch, failing):
  directory = tmp_path / "checkpoints"
  _write(directory, steps=(2,))
  checkpointer = checkpoints.Checkpointer(directory, every_steps=2, keep=3)
  if failing != "save":
    assert checkpointer.save(4, _state(4))  # In flight when its write fails.
  monkeypatch.setattr(checkpointer._manager, failing, _no_space_left)
  with pytest.raises(TrainingError) as error:
    if failing == "wait_until_finished":
      checkpointer.close()
    else:
      checkpointer.save(4 if failing == "save" else 5, _state(4))
  assert str(error.value).startswith(
    f"Saving the checkpoint of step 4 in {directory} failed: No space left on device."
  )
  monkeypatch.undo()
  checkpointer.close()
  assert "2" in {p.name for p in directory.iterdir()}  # Every checkpoint written before is kept.
