"""The public entry points: one call per need, whatever the data set.

Names in `registry.ARRAY_DATASETS` ("digits", "mnist1d", "fake", and any registered later) are served
from memory in pure NumPy; every other name is a TFDS data set read with `tf.data`. TensorFlow is
imported only in the second case (it takes seconds to start).
"""

import os
from collections.abc import Iterator

import numpy as np

from input_pipeline import arrays, defaults, registry, sharding, validation
from input_pipeline.dataset_info import DatasetInfo


def _array_splits(name: str, image_size: int | None, data_dir: str | None) -> arrays.ArraySplits | None:
  """The in-memory data set `name`, or None if `name` is not one (then it is a TFDS name)."""
  if not isinstance(name, str):
    raise TypeError(f"`name` must be a string, got {type(name).__name__}.")
  validation.check_int(image_size, "image_size", minimum=1, allow_none=True)
  if name not in registry.ARRAY_DATASETS:
    return None
  return registry.ARRAY_DATASETS[name](image_size=image_size, data_dir=data_dir)


def _layout_and_splits(
  name, global_batch_size, dtype, image_size, data_dir, process_index, process_count, local_device_count
) -> tuple[sharding.ProcessLayout, arrays.ArraySplits | None]:
  """The checks and the layout both iterators start with, and the in-memory data (None for TFDS)."""
  arrays.as_dtype(dtype)
  layout = sharding.process_layout(
    global_batch_size,
    process_index=process_index,
    process_count=process_count,
    local_device_count=local_device_count,
  )
  return layout, _array_splits(name, image_size, data_dir)


def _tfds_pipeline():
  # TensorFlow's C++ INFO/WARNING lines at import (the oneDNN notice, CUDA probing) are noise to a user.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from input_pipeline import tfds_pipeline  # imports TensorFlow: only for TFDS data sets.

  return tfds_pipeline


def get_dataset_info(
  name: str, *, data_dir: str | None = None, image_size: int | None = None, augmentation: str | None = None
) -> DatasetInfo:
  """Sizes, classes and served example shape of a data set.

  Args:
    name: "digits" (scikit-learn's 8x8 digits, offline), "mnist1d" (generated offline), "fake"
      (synthetic, ImageNet-sized by default), another registered in-memory data set, or any TFDS
      image classification data set ("imagenet2012", "cifar10", "imagenette", ...).
    data_dir: TFDS data directory (None: TFDS's default); for "mnist1d", where to cache the arrays.
    image_size: side of the served images (None: the data set's default; 224 for ImageNet-like).
    augmentation: TFDS only, as for `train_iterator` (it decides the served size when `image_size`
      is None: 224 for "inception" crops, the stored size otherwise).

  Returns:
    `DatasetInfo(name, num_classes, image_shape, num_train, num_eval)`.

  Raises:
    ValueError: unknown name or bad `image_size`.
    tfds_data.DatasetNotPreparedError: a TFDS data set whose files are not in `data_dir`.
  """
  splits = _array_splits(name, image_size, data_dir)
  if splits is not None:
    return DatasetInfo(
      name=name,
      num_classes=splits.num_classes,
      image_shape=tuple(splits.train_images.shape[1:]),
      num_train=len(splits.train_labels),
      num_eval=len(splits.eval_labels),
    )
  return _tfds_pipeline().dataset_info(
    name, data_dir=data_dir, image_size=image_size, augmentation=augmentation
  )


def train_iterator(
  name: str,
  *,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  image_size: int | None = None,
  dtype: str | np.dtype = "float32",
  data_dir: str | None = None,
  shuffle_buffer_size: int = defaults.SHUFFLE_BUFFER_SIZE,
  cache: bool = False,
  augmentation: str | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  local_device_count: int | None = None,
  num_threads: int | None = None,
) -> Iterator[arrays.Batch]:
  """Endless training batches for this process, shaped for `jax.pmap`.

  The batch of step `s` is a pure function of `(seed, s)` (and, for TFDS data, of the process
  count): a run restarted with `start_step=s` sees the batches it would have seen.

  Args:
    name: see `get_dataset_info`.
    global_batch_size: examples per step over all processes (`B`); divisible by
      `process_count * local_device_count`.
    seed: non-negative integer fixing the order and the augmentations.
    start_step: first step to serve.
    image_size: side of the served images (see `get_dataset_info`).
    dtype: "float32", "bfloat16" or "float16" images.
    data_dir: see `get_dataset_info`.
    shuffle_buffer_size: TFDS only (in-memory data are fully permuted every epoch).
    cache: TFDS only: keep the encoded training records in memory after the first epoch.
    augmentation: TFDS only: a name in `preprocessing.AUGMENTATIONS` ("inception", "pad_crop_flip",
      ...); None picks the data set's default. In-memory data sets are not augmented.
    process_index: defaults to `jax.process_index()`.
    process_count: defaults to `jax.process_count()`.
    local_device_count: defaults to `jax.local_device_count()`.
    num_threads: TFDS only: size of tf.data's private thread pool (default: usable CPUs).

  Returns:
    An iterator of `{"image": (D, B / (P D), *image_shape) dtype, "label": (D, B / (P D)) int32}`
    NumPy arrays, D local devices and P processes.

  Raises:
    ValueError: an argument is out of range or inconsistent (raised here, not at the first batch).
  """
  validation.check_int(seed, "seed", minimum=0)
  validation.check_int(start_step, "start_step", minimum=0)
  validation.check_int(shuffle_buffer_size, "shuffle_buffer_size", minimum=1)
  layout, splits = _layout_and_splits(
    name, global_batch_size, dtype, image_size, data_dir, process_index, process_count, local_device_count
  )
  if splits is not None:
    return arrays.train_batches(splits, layout, seed=seed, start_step=start_step, dtype=dtype)
  return _tfds_pipeline().train_iterator(
    name,
    layout=layout,
    seed=seed,
    start_step=start_step,
    image_size=image_size,
    dtype=dtype,
    data_dir=data_dir,
    shuffle_buffer_size=shuffle_buffer_size,
    cache=cache,
    augmentation=augmentation,
    num_threads=num_threads,
  )


def eval_iterator(
  name: str,
  *,
  global_batch_size: int,
  image_size: int | None = None,
  dtype: str | np.dtype = "float32",
  data_dir: str | None = None,
  cache: bool = False,
  crop_padding: int = defaults.CROP_PADDING,
  augmentation: str | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  local_device_count: int | None = None,
  num_threads: int | None = None,
) -> Iterator[arrays.Batch]:
  """Evaluation batches for this process, covering the evaluation split exactly once in total.

  Every process yields `ceil(N_eval / B)` batches, however many examples its part holds; padded
  examples carry `mask` False. Sum `mask`-weighted metrics over devices and processes and divide by
  the sum of `mask` for exact results.

  Args:
    name, global_batch_size, image_size, dtype, data_dir, process_index, process_count,
      local_device_count, num_threads, augmentation: as for `train_iterator` (only the evaluation
      half of the augmentation is used: centre crop for "inception").
    cache: TFDS only: keep the preprocessed evaluation images in memory after the first pass.
    crop_padding: TFDS "inception" only: the centre crop keeps `S / (S + crop_padding)` of the
      shorter side (32: 224 of 256; AlexNet's 227 of 256 is `image_size=227, crop_padding=29`).

  Returns:
    A finite iterator of `{"image", "label", "mask": (D, B / (P D)) bool}` NumPy arrays.
  """
  validation.check_int(crop_padding, "crop_padding", minimum=0)
  layout, splits = _layout_and_splits(
    name, global_batch_size, dtype, image_size, data_dir, process_index, process_count, local_device_count
  )
  if splits is not None:
    return arrays.eval_batches(splits, layout, dtype=dtype)
  return _tfds_pipeline().eval_iterator(
    name,
    layout=layout,
    image_size=image_size,
    dtype=dtype,
    data_dir=data_dir,
    cache=cache,
    crop_padding=crop_padding,
    augmentation=augmentation,
    num_threads=num_threads,
  )


def load_arrays(
  name: str, *, data_dir: str | None = None, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """A small data set as `(x_train, y_train, x_test, y_test)` NumPy arrays, normalised.

  For "digits", "mnist1d" and TFDS data sets of fixed-size images (e.g. "cifar10", "mnist"); the
  test arrays are the evaluation split. Images are float32, labels int32. "fake" data are generated
  batch by batch and have no arrays.

  Raises:
    ValueError: for "fake" and for TFDS data sets of images of varying size.
  """
  splits = _array_splits(name, image_size, data_dir)
  if splits is None:
    splits = _tfds_pipeline().load_arrays(name, data_dir=data_dir, image_size=image_size)
  stored = splits[:4]
  if not all(isinstance(array, np.ndarray) for array in stored):
    raise ValueError(f"{name!r} is generated batch by batch: use `train_iterator`, not `load_arrays`.")
  return tuple(stored)
