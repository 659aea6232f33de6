"""How a global batch of `B` examples is split: `B / P` per process, `B / (P D)` per local device."""

from collections.abc import Mapping
from typing import NamedTuple

import jax
import numpy as np

from input_pipeline.validation import InputError, check_int


class ProcessLayout(NamedTuple):
  """This process's place in a run: `B` examples per step, process `p` of `P`, `D` local devices."""

  global_batch_size: int
  process_index: int
  process_count: int
  local_device_count: int

  @property
  def per_process_batch_size(self) -> int:
    return self.global_batch_size // self.process_count


def process_layout(
  global_batch_size: int,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
  local_device_count: int | None = None,
) -> ProcessLayout:
  """The validated layout of this process; None takes JAX's value (tests pass them to simulate hosts).

  Raises:
    InputError: an argument is not a positive integer, `process_index` is out of range, or
      `global_batch_size` is not divisible by `process_count * local_device_count`.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_device_count = jax.local_device_count() if local_device_count is None else local_device_count
  check_int(global_batch_size, "global_batch_size", minimum=1)
  check_int(process_count, "process_count", minimum=1)
  check_int(local_device_count, "local_device_count", minimum=1)
  check_int(process_index, "process_index", minimum=0)
  if process_index >= process_count:
    raise InputError("process_index", f"`process_index` must be < process_count={process_count}.")
  if global_batch_size % (process_count * local_device_count):
    raise InputError(
      "global_batch_size",
      f"`global_batch_size`={global_batch_size} must be divisible by process_count * local_device_count"
      f" = {process_count} * {local_device_count}.",
    )
  return ProcessLayout(global_batch_size, process_index, process_count, local_device_count)


def shard_for_devices(batch: Mapping[str, np.ndarray], local_device_count: int) -> dict:
  """Reshapes every array of a process batch from `(D b, ...)` to `(D, b, ...)`."""
  return {
    key: np.reshape(value, (local_device_count, -1, *np.shape(value)[1:])) for key, value in batch.items()
  }


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """`ceil(N / B)`: evaluation steps of every process, enough for its part since parts differ by <= 1."""
  check_int(num_examples, "num_examples", minimum=1)
  check_int(global_batch_size, "global_batch_size", minimum=1)
  return -(-num_examples // global_batch_size)
