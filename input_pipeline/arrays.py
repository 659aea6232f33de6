"""Batches of data sets held in memory as NumPy arrays (digits, MNIST-1D, fake data).

Training order. Epoch `e` visits the training set in the order `π_e = default_rng([seed, e]).permutation(N)`;
step `s` is in epoch `e = s // S` (`S = N // B`, the last incomplete batch dropped) and takes the global
batch `π_e[(s mod S) B : (s mod S + 1) B]`, of which process `p` serves the `p`-th slice of `B / P`. The
order is a pure function of `(seed, step)` whatever the number of processes: a restart needs no state.

Evaluation. `ceil(N_eval / B)` global batches in stored order; the last is padded with zero images whose
`mask` is False, so every process runs the same number of steps and masked metrics are exact.
"""

import itertools
from collections.abc import Iterator
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from input_pipeline import sharding
from input_pipeline.validation import InputError

Batch = dict[str, np.ndarray]

# Output dtypes the pipelines offer, by name (bfloat16 is ml_dtypes', the one JAX uses).
DTYPES = {name: np.dtype(name) for name in ("float32", "float16")} | {
  "bfloat16": np.dtype(ml_dtypes.bfloat16)
}


class ArraySplits(NamedTuple):
  """A data set in memory: normalised float32 images `(N, ...)`, int32 labels `(N,)`, read-only."""

  train_images: Any  # np.ndarray, or fake.TiledArray.
  train_labels: Any
  eval_images: Any
  eval_labels: Any
  num_classes: int


def read_only(splits: ArraySplits) -> ArraySplits:
  for array in splits[:4]:
    array.flags.writeable = False
  return splits


def as_dtype(dtype: str | np.dtype) -> np.dtype:
  """The NumPy dtype named in `DTYPES` (or such a dtype itself)."""
  key = dtype if isinstance(dtype, str) else np.dtype(dtype).name
  if key not in DTYPES:
    raise InputError("dtype", f"`dtype` must be one of {sorted(DTYPES)}, got {dtype!r}.")
  return DTYPES[key]


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order in which epoch `epoch` visits `num_examples` training examples."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_batches(
  splits: ArraySplits, layout: sharding.ProcessLayout, *, seed: int, start_step: int, dtype: str
) -> Iterator[Batch]:
  """Endless `{"image": (D, b, ...) dtype, "label": (D, b) int32}`: this process's part of each batch."""
  dtype, num_examples = as_dtype(dtype), len(splits.train_labels)
  steps = num_examples // layout.global_batch_size  # the last incomplete batch is dropped.
  if steps < 1:
    raise InputError(
      "global_batch_size", f"`global_batch_size` exceeds the {num_examples} training examples."
    )
  return _train_batches(splits, layout, seed, start_step, dtype, steps)


def _train_batches(splits, layout, seed, start_step, dtype, steps) -> Iterator[Batch]:
  begin = layout.process_index * layout.per_process_batch_size
  for step in itertools.count(start_step):
    epoch, position = divmod(step, steps)
    if step == start_step or position == 0:
      order = epoch_permutation(seed, epoch, len(splits.train_labels))
    indices = order[position * layout.global_batch_size + begin :][: layout.per_process_batch_size]
    batch = {
      "image": np.asarray(splits.train_images[indices], dtype=dtype),
      "label": np.asarray(splits.train_labels[indices], dtype=np.int32),
    }
    yield sharding.shard_for_devices(batch, layout.local_device_count)


def eval_batches(splits: ArraySplits, layout: sharding.ProcessLayout, *, dtype: str) -> Iterator[Batch]:
  """This process's part of each evaluation batch, padded, once; padding: zero image, label 0, mask False."""
  return _eval_batches(splits, layout, as_dtype(dtype))


def _eval_batches(splits, layout, dtype) -> Iterator[Batch]:
  num_examples = len(splits.eval_labels)
  first = layout.process_index * layout.per_process_batch_size + np.arange(layout.per_process_batch_size)
  for step in range(sharding.num_eval_batches(num_examples, layout.global_batch_size)):
    positions = step * layout.global_batch_size + first
    mask = positions < num_examples
    indices = np.where(mask, positions, 0)
    images = np.asarray(splits.eval_images[indices], dtype=dtype)
    images[~mask] = 0
    labels = np.where(mask, splits.eval_labels[indices], 0).astype(np.int32)
    yield sharding.shard_for_devices(
      {"image": images, "label": labels, "mask": mask}, layout.local_device_count
    )
