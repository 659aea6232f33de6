"""Batches from data sets held in memory as NumPy arrays (digits, MNIST-1D, fake data).

Training order. Epoch `e` visits the training set in the order of the permutation
`π_e = numpy.random.default_rng([seed, e]).permutation(N)`; step `s` belongs to epoch
`e = s // S` (with `S = N // B` steps per epoch, the last incomplete batch dropped) and takes the global
batch `π_e[(s mod S) B : (s mod S + 1) B]`, of which process `p` serves the `p`-th slice of `B / P`
examples. The order is therefore a pure function of `(seed, step)`, the same whatever the number of
processes, and restarting at `start_step` needs no iterator state.

Evaluation. The evaluation set is cut into `ceil(N_eval / B)` global batches in its stored order; the
last one is padded with zero images whose `mask` is False, so that every process runs the same number
of steps and masked metrics count every example exactly once.
"""

import itertools
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

import ml_dtypes
import numpy as np

import lars_optax
from input_pipeline import sharding

Batch = dict[str, np.ndarray]

# Output dtypes the pipelines offer, by name (bfloat16 is ml_dtypes', the one JAX uses).
DTYPES = {
  "float32": np.dtype(np.float32),
  "bfloat16": np.dtype(ml_dtypes.bfloat16),
  "float16": np.dtype(np.float16),
}


class ArrayLike(Protocol):
  """What the batching code needs from an image or label store (a NumPy array is one)."""

  shape: tuple[int, ...]
  dtype: Any

  def __len__(self) -> int: ...

  def __getitem__(self, indices: np.ndarray) -> np.ndarray: ...


class ArraySplits(NamedTuple):
  """A data set held in memory.

  Attributes:
    train_images: `(N_train, *image_shape)` float32, already normalised.
    train_labels: `(N_train,)` int32.
    eval_images: `(N_eval, *image_shape)` float32, already normalised.
    eval_labels: `(N_eval,)` int32.
    num_classes: number of labels.
  """

  train_images: ArrayLike
  train_labels: ArrayLike
  eval_images: ArrayLike
  eval_labels: ArrayLike
  num_classes: int


def as_dtype(dtype: str | np.dtype) -> np.dtype:
  """Returns the NumPy dtype for one of the names in `DTYPES` (or such a dtype itself)."""
  key = dtype if isinstance(dtype, str) else np.dtype(dtype).name
  if key not in DTYPES:
    raise ValueError(f"`dtype` must be one of {sorted(DTYPES)}, got {dtype!r}.")
  return DTYPES[key]


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order in which epoch `epoch` visits `num_examples` training examples."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_batches(
  splits: ArraySplits,
  layout: sharding.ProcessLayout,
  *,
  seed: int,
  start_step: int = 0,
  dtype: str | np.dtype = "float32",
) -> Iterator[Batch]:
  """Returns an endless iterator over this process's part of every training batch from `start_step`.

  Args:
    splits: the data set.
    layout: global batch size and this process's place.
    seed: non-negative integer; with the step, it fixes the batch.
    start_step: first step to serve (a restart resumes here).
    dtype: image dtype, a name in `DTYPES`.

  Returns:
    An iterator of `{"image": (D, b, *image_shape), "label": (D, b) int32}` with `b = B / (P D)`.

  Raises:
    ValueError: if `dtype` is unknown or the global batch is larger than the training set.
  """
  dtype = as_dtype(dtype)
  num_examples = len(splits.train_labels)
  steps = lars_optax.steps_per_epoch(num_examples, layout.global_batch_size)  # N // B, remainder dropped
  begin = layout.process_index * layout.per_process_batch_size
  end = begin + layout.per_process_batch_size

  def batches() -> Iterator[Batch]:
    epoch, order = None, None
    for step in itertools.count(start_step):
      if step // steps != epoch:
        epoch = step // steps
        order = epoch_permutation(seed, epoch, num_examples)
      offset = (step % steps) * layout.global_batch_size
      indices = order[offset + begin : offset + end]
      batch = {
        "image": np.asarray(splits.train_images[indices], dtype=dtype),
        "label": np.asarray(splits.train_labels[indices], dtype=np.int32),
      }
      yield sharding.shard_for_devices(batch, layout.local_device_count)

  return batches()


def eval_batches(
  splits: ArraySplits,
  layout: sharding.ProcessLayout,
  *,
  dtype: str | np.dtype = "float32",
) -> Iterator[Batch]:
  """Returns an iterator over this process's part of every evaluation batch, padded, once.

  Returns:
    An iterator of `{"image": (D, b, *image_shape), "label": (D, b) int32, "mask": (D, b) bool}`;
    padded examples have zero images, label 0 and mask False.
  """
  dtype = as_dtype(dtype)
  num_examples = len(splits.eval_labels)
  num_batches = sharding.num_eval_batches(num_examples, layout.global_batch_size)
  first = layout.process_index * layout.per_process_batch_size + np.arange(layout.per_process_batch_size)

  def batches() -> Iterator[Batch]:
    for step in range(num_batches):
      positions = step * layout.global_batch_size + first
      mask = positions < num_examples
      indices = np.where(mask, positions, 0)
      images = np.asarray(splits.eval_images[indices], dtype=dtype)
      images[~mask] = 0
      labels = np.where(mask, np.asarray(splits.eval_labels[indices]), 0).astype(np.int32)
      batch = {"image": images, "label": labels, "mask": mask}
      yield sharding.shard_for_devices(batch, layout.local_device_count)

  return batches()
