"""Checkpoints of the training state with Orbax: periodic and final, atomic, the last K kept.

A checkpoint holds the `TrainState` (parameters, optimizer state, batch statistics, step, skipped-step
count) as a tree of host arrays. Nothing else is needed to resume exactly: the data order and the
dropout keys are functions of (config.seed, step), so the step restores them too.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest. Saves are asynchronous (training continues while
the arrays are written); `close` waits for the last one. With several processes every process calls
`save` and `restore` (Orbax synchronises them; the replicated host arrays are written once).
"""

import os

import flax
import jax
import orbax.checkpoint as ocp

from training.steps import TrainState


class Checkpointer:
  """Saves and restores `TrainState` in ``directory`` (a step number per checkpoint)."""

  def __init__(self, directory: str | os.PathLike, *, every_steps: int, keep: int):
    """Opens (or creates) the checkpoint directory.

    Args:
      directory: where checkpoints live, one subdirectory per step.
      every_steps: periodic saves every this many steps (0: only forced saves).
      keep: how many of the most recent checkpoints to keep.
    """
    self._every_steps = every_steps
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  @property
  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, None when there is none."""
    return self._manager.latest_step()

  def restore_latest(self, target: TrainState) -> TrainState:
    """The newest checkpoint, with the structure and dtypes of ``target``; ``target`` without one."""
    step = self._manager.latest_step()
    if step is None:
      return target
    template = flax.serialization.to_state_dict(jax.device_get(target))
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(template))
    return flax.serialization.from_state_dict(target, restored)

  def save(self, step: int, state: TrainState, *, force: bool = False) -> bool:
    """Saves ``state`` (at ``step``) when the step is periodic or ``force``; returns whether it did."""
    periodic = self._every_steps > 0 and step % self._every_steps == 0
    if not (periodic or force) or step == self._manager.latest_step():
      return False
    host_state = flax.serialization.to_state_dict(jax.device_get(state))
    return self._manager.save(step, args=ocp.args.StandardSave(host_state), force=True)

  def close(self) -> None:
    """Waits for pending saves to be committed, then releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
