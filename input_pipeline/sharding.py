"""How a global batch is split between processes and between the devices of one process.

A global batch of `B` examples is read by `P` processes; each process serves `B / P` examples to its
`D` local devices, `B / (P D)` per device, as arrays shaped `(D, B / (P D), ...)` for `jax.pmap`.
"""

from collections.abc import Mapping
from typing import NamedTuple

import jax
import numpy as np

from input_pipeline import validation


class ProcessLayout(NamedTuple):
  """Where this process sits in a multi-process run and how much of each batch it serves.

  Attributes:
    global_batch_size: examples per step, all processes together (`B`).
    process_index: index of this process, in `[0, process_count)`.
    process_count: number of processes (`P`), one per host on a TPU pod.
    local_device_count: devices attached to this process (`D`).
  """

  global_batch_size: int
  process_index: int
  process_count: int
  local_device_count: int

  @property
  def per_process_batch_size(self) -> int:
    """`B / P`: examples this process reads per step."""
    return self.global_batch_size // self.process_count

  @property
  def per_device_batch_size(self) -> int:
    """`B / (P D)`: examples each local device receives per step."""
    return self.per_process_batch_size // self.local_device_count


def process_layout(
  global_batch_size: int,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
  local_device_count: int | None = None,
) -> ProcessLayout:
  """Returns the layout of this process, defaulting to what JAX reports.

  Passing `process_index` and `process_count` explicitly lets one process compute what any process
  of a multi-host run would read (tests simulate several hosts this way).

  Args:
    global_batch_size: examples per step, all processes together.
    process_index: defaults to `jax.process_index()`.
    process_count: defaults to `jax.process_count()`.
    local_device_count: defaults to `jax.local_device_count()`.

  Returns:
    The validated `ProcessLayout`.

  Raises:
    ValueError: if an argument is not a positive integer, `process_index` is out of range, or
      `global_batch_size` is not divisible by `process_count * local_device_count`.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_device_count = jax.local_device_count() if local_device_count is None else local_device_count
  validation.check_int(global_batch_size, "global_batch_size", minimum=1)
  validation.check_int(process_count, "process_count", minimum=1)
  validation.check_int(local_device_count, "local_device_count", minimum=1)
  if not 0 <= process_index < process_count:
    raise ValueError(
      f"`process_index` must be in [0, {process_count}) for process_count={process_count}, "
      f"got {process_index!r}."
    )
  shards = process_count * local_device_count
  if global_batch_size % shards:
    raise ValueError(
      f"`global_batch_size`={global_batch_size} must be divisible by process_count * "
      f"local_device_count = {process_count} * {local_device_count} = {shards}."
    )
  return ProcessLayout(
    int(global_batch_size), int(process_index), int(process_count), int(local_device_count)
  )


def shard_for_devices(batch: Mapping[str, np.ndarray], local_device_count: int) -> dict:
  """Reshapes every array of a process batch from `(D b, ...)` to `(D, b, ...)`."""
  return {
    key: np.reshape(value, (local_device_count, -1, *np.shape(value)[1:])) for key, value in batch.items()
  }


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Number of evaluation steps that cover `num_examples` once: `ceil(num_examples / B)`.

  Every process runs this many steps, whatever the size of its own part (parts differ by up to one
  example), so collectives inside the evaluation step never wait for a process that has finished.
  Because `ceil(ceil(N / P) / (B / P)) = ceil(N / B)`, it is also enough for the largest part.
  """
  validation.check_int(num_examples, "num_examples", minimum=1)
  validation.check_int(global_batch_size, "global_batch_size", minimum=1)
  return -(-num_examples // global_batch_size)
