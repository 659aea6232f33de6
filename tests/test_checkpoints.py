"""Checkpoints on a real Orbax directory: damage of every kind is detected, set aside and fallen back from.

Three checkpoints (steps 2, 4, 6) of a small state are written once per test; the newest is damaged
the way disks and people damage files, and `restore_latest` must return step 4, bit for bit, rename
step 6 (never delete it) and name it in a warning.
"""

import shutil
from pathlib import Path

import flax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from training import checkpoints
from training.errors import TrainingError
from training.steps import TrainState


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


DAMAGE = {
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
  assert checkpointer.latest_step == 4
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


def test_checkpoint_without_checksums_is_still_checked_for_finiteness(tmp_path):
  """A checkpoint written by plain Orbax (an older train.py: no checksums) with a NaN is set aside."""
  directory = tmp_path / "checkpoints"
  _write(directory, steps=(2,))
  bad = flax.serialization.to_state_dict(_state(4))
  bad["params"]["dense"]["kernel"][0, 0] = np.inf
  manager = ocp.CheckpointManager(directory)
  manager.save(4, args=ocp.args.StandardSave(bad))
  manager.close()
  checkpointer = checkpoints.Checkpointer(directory, every_steps=2, keep=3)
  restored = checkpointer.restore_latest(_target())
  checkpointer.close()
  assert int(restored.step) == 2
  assert sorted(p.name for p in directory.iterdir()) == ["2", "4.corrupt-non-finite-values"]
