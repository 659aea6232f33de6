"""How a global batch of `B` examples is split: `B / P` per process, `B / (P D)` per local device."""

from typing import NamedTuple

import jax

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
  """The checked layout of this process; None takes JAX's value (tests pass them to simulate hosts)."""
  layout = ProcessLayout(
    global_batch_size,
    jax.process_index() if process_index is None else process_index,
    jax.process_count() if process_count is None else process_count,
    jax.local_device_count() if local_device_count is None else local_device_count,
  )
  for argument, value in layout._asdict().items():
    check_int(value, argument, minimum=0 if argument == "process_index" else 1)
  if layout.process_index >= layout.process_count:
    raise InputError("process_index", f"`process_index` must be < process_count={layout.process_count}.")
  if global_batch_size % (shards := layout.process_count * layout.local_device_count):
    message = (
      f"`global_batch_size`={global_batch_size} must be divisible by the {shards} devices of all processes."
    )
    raise InputError("global_batch_size", message)
  return layout


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """`ceil(N / B)`: evaluation steps of every process, enough for its part since parts differ by <= 1."""
  check_int(num_examples, "num_examples", minimum=1)
  check_int(global_batch_size, "global_batch_size", minimum=1)
  return -(-num_examples // global_batch_size)
