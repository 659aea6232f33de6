"""Batches of data sets held in memory as NumPy arrays (digits, MNIST-1D, fake data).
Training: epoch `e` visits the examples in the order `π_e = default_rng([seed, e]).permutation(N)`; step `s`
(epoch `s // S`, `S = N // B`: the last incomplete batch is dropped) takes `π_e[(s mod S) B :][: B]`, and
process `p` serves its `p`-th slice of `B / P`: a function of `(seed, step)` whatever the number of
processes, so a restart needs no iterator state. Evaluation: `ceil(N_eval / B)` batches in stored order,
the last padded with zero images whose `mask` is False. Fake data (ImageNet's sizes, labels without
signal) hold `POOL_SIZE` distinct examples, `i` being `i mod POOL_SIZE`: a batch is a gather and a copy.
"""

import itertools
from collections.abc import Iterator
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from input_pipeline import sharding
from input_pipeline.validation import InputError

Batch = dict[str, np.ndarray]
POOL_SIZE = 64
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class ArraySplits(NamedTuple):
  """A data set in memory: normalised float32 images `(N, ...)`, int32 labels `(N,)`, read-only."""

  train_images: Any  # np.ndarray, or TiledArray.
  train_labels: Any
  eval_images: Any
  eval_labels: Any
  num_classes: int


class TiledArray:
  """A read-only array of `length` rows in which row `i` is row `i mod len(pool)` of `pool`."""

  def __init__(self, pool: np.ndarray, length: int):
    self._pool, self.shape, self.dtype = pool, (length, *pool.shape[1:]), pool.dtype

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, indices: np.ndarray) -> np.ndarray:
    return self._pool[np.asarray(indices) % len(self._pool)]


def load_fake(*, image_size: int | None = None, data_dir: str | None = None, seed: int = 0) -> ArraySplits:
  """Fake ImageNet: 1,281,167 training and 50,000 evaluation `(S, S, 3)` images (S: 224), 1,000 classes."""
  del data_dir
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((POOL_SIZE, image_size or 224, image_size or 224, 3), dtype=np.float32)
  labels = rng.integers(0, 1000, POOL_SIZE).astype(np.int32)
  images.flags.writeable = labels.flags.writeable = False
  tiled = [TiledArray(array, length) for length in (1_281_167, 50_000) for array in (images, labels)]
  return ArraySplits(*tiled, 1000)


def read_only(splits: ArraySplits) -> ArraySplits:
  for array in splits[:4]:
    array.flags.writeable = False
  return splits


def as_dtype(dtype: str) -> np.dtype:
  """The NumPy dtype named `dtype`, a key of `DTYPES`."""
  if dtype not in DTYPES:
    raise InputError("dtype", f"`dtype` must be one of {sorted(DTYPES)}, got {dtype!r}.")
  return np.dtype(DTYPES[dtype])


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order in which epoch `epoch` visits `num_examples` training examples."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def _shard(batch: Batch, layout: sharding.ProcessLayout) -> Batch:
  """`(D b, ...)` arrays reshaped to `(D, b, ...)`, one slice per local device."""
  return {key: value.reshape(layout.local_device_count, -1, *value.shape[1:]) for key, value in batch.items()}


def train_batches(
  splits: ArraySplits, layout: sharding.ProcessLayout, *, seed: int, start_step: int, dtype: np.dtype
) -> Iterator[Batch]:
  """Endless `{"image": (D, b, ...) dtype, "label": (D, b) int32}`: this process's part of each batch."""
  steps = len(splits.train_labels) // layout.global_batch_size
  if steps < 1:
    raise InputError("global_batch_size", "`global_batch_size` exceeds the training examples.")
  return _train_batches(splits, layout, seed, start_step, dtype, steps)


def _train_batches(splits, layout, seed, start_step, dtype, steps) -> Iterator[Batch]:
  begin = layout.process_index * layout.per_process_batch_size
  for step in itertools.count(start_step):
    epoch, position = divmod(step, steps)
    if step == start_step or position == 0:
      order = epoch_permutation(seed, epoch, len(splits.train_labels))
    indices = order[position * layout.global_batch_size + begin :][: layout.per_process_batch_size]
    images, labels = splits.train_images[indices], splits.train_labels[indices]
    yield _shard({"image": np.asarray(images, dtype), "label": np.asarray(labels, np.int32)}, layout)


def eval_batches(splits: ArraySplits, layout: sharding.ProcessLayout, *, dtype: np.dtype) -> Iterator[Batch]:
  """This process's part of each evaluation batch, once; padding: zero image, label 0, `mask` False."""
  num_examples = len(splits.eval_labels)
  first = layout.process_index * layout.per_process_batch_size + np.arange(layout.per_process_batch_size)
  for step in range(sharding.num_eval_batches(num_examples, layout.global_batch_size)):
    positions = step * layout.global_batch_size + first
    mask = positions < num_examples
    indices = np.where(mask, positions, 0)
    images = np.asarray(splits.eval_images[indices], dtype)
    images[~mask] = 0
    labels = np.where(mask, splits.eval_labels[indices], 0).astype(np.int32)
    yield _shard({"image": images, "label": labels, "mask": mask}, layout)
