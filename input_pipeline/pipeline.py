"""The public entry points: one call per need, whatever the data set.

Names in `ARRAY_DATASETS` are served from memory in NumPy; any other name is a TFDS data set, opened (and
checked) without TensorFlow, whose batches come from `tf.data` (TensorFlow is imported then).
"""

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from input_pipeline import arrays, defaults, digits, fake, mnist1d, sharding, tfds_data
from input_pipeline.validation import InputError, check_int

# In-memory data sets: `load(image_size=..., data_dir=...) -> arrays.ArraySplits`.
ARRAY_DATASETS = {"digits": digits.load, "mnist1d": mnist1d.load, "fake": fake.load}


class DatasetInfo(NamedTuple):
  """A data set as served: int32 labels in `[0, num_classes)`, examples of `image_shape` (HWC, or LC)."""

  name: str
  num_classes: int
  image_shape: tuple[int, ...]
  num_train: int
  num_eval: int


def _open(name: str, data_dir: str | None, image_size: int | None, augmentation: str | None):
  """The in-memory `arrays.ArraySplits` or the `tfds_data.TfdsSource` of `name`, arguments checked."""
  if not isinstance(name, str):
    raise InputError("dataset", f"`dataset` must be a string, got {type(name).__name__}.")
  check_int(image_size, "image_size", minimum=1, allow_none=True)
  if name not in ARRAY_DATASETS:
    return tfds_data.open_source(name, data_dir, augmentation, image_size)
  if augmentation not in (None, "none"):
    message = f"`augmentation` must be None or 'none' for {name!r} (not augmented), got {augmentation!r}."
    raise InputError("augmentation", message)
  return ARRAY_DATASETS[name](image_size=image_size, data_dir=data_dir)


def _tfds_pipeline():
  from input_pipeline import tfds_pipeline  # imports TensorFlow: only for TFDS data sets.

  return tfds_pipeline


def get_dataset_info(
  name: str, *, data_dir: str | None = None, image_size: int | None = None, augmentation: str | None = None
) -> DatasetInfo:
  """Sizes, classes and served example shape of a data set, its arguments checked (no TensorFlow).

  Args:
    name: "digits" (scikit-learn's 8x8 digits), "mnist1d", "fake" (ImageNet-sized synthetic data), or a
      TFDS image-classification data set ("imagenet2012", "cifar10", ...) prepared in `data_dir`.
    data_dir: TFDS data directory (None: `$TFDS_DATA_DIR` or `~/tensorflow_datasets`); "mnist1d" caches there.
    image_size: side of the served images (None: the stored size; 224 for Inception crops).
    augmentation: TFDS only: a name in `tfds_data.AUGMENTATIONS` (None: the data set's default).

  Raises:
    InputError: naming the argument: unknown or unprepared data set, TFDS not installed, bad value.
  """
  data = _open(name, data_dir, image_size, augmentation)
  if isinstance(data, arrays.ArraySplits):
    shape = tuple(data.train_images.shape[1:])
    return DatasetInfo(name, data.num_classes, shape, len(data.train_labels), len(data.eval_labels))
  num_classes = data.builder.info.features[data.label_key].num_classes
  shape = data.image_shape if data.image_size is None else (data.image_size,) * 2 + data.image_shape[-1:]
  counts = data.num_examples(tfds_data.TRAIN_SPLIT), data.num_examples(data.eval_split)
  return DatasetInfo(name, num_classes, shape, *counts)


def check_data_config(
  dataset: str,
  *,
  data_dir: str | None = None,
  image_size: int | None = None,
  augmentation: str | None = None,
  crop_padding: int = defaults.CROP_PADDING,
  shuffle_buffer_size: int = defaults.SHUFFLE_BUFFER_SIZE,
) -> DatasetInfo:
  """Checks the data fields of a training config (same names) at load; returns the `DatasetInfo`.

  Raises:
    InputError: its `argument` is the field to fix; the message names it and what it accepts.
  """
  check_int(crop_padding, "crop_padding", minimum=0)
  check_int(shuffle_buffer_size, "shuffle_buffer_size", minimum=1)
  return get_dataset_info(dataset, data_dir=data_dir, image_size=image_size, augmentation=augmentation)


def train_iterator(
  name: str,
  *,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  image_size: int | None = None,
  dtype: str = "float32",
  data_dir: str | None = None,
  shuffle_buffer_size: int = defaults.SHUFFLE_BUFFER_SIZE,
  cache: bool = False,
  augmentation: str | None = None,
  num_threads: int | None = None,
  **placement: int | None,
) -> Iterator[arrays.Batch]:
  """Endless training batches of this process: `{"image": (D, b, ...) dtype, "label": (D, b) int32}`.

  The batch of step `s` is a pure function of `(seed, s)` (and, for TFDS data, of the process count):
  a run restarted with `start_step=s` sees the batches it would have seen.

  Args:
    name, data_dir, image_size, augmentation: as for `get_dataset_info`.
    global_batch_size: `B`, examples per step over all `P` processes; divisible by `P D` (`b = B / (P D)`).
    seed: non-negative integer fixing the order and the augmentations.
    start_step: first step to serve.
    dtype: "float32", "bfloat16" or "float16" images.
    shuffle_buffer_size, cache, num_threads: TFDS only: shuffle buffer (in-memory data are fully
      permuted), keep the training records in memory after the first epoch, tf.data's thread pool size.
    **placement: `process_index`, `process_count`, `local_device_count` (None: JAX's values).

  Raises:
    InputError: naming the argument out of range or inconsistent, here rather than at the first batch.
  """
  check_int(seed, "seed", minimum=0)
  check_int(start_step, "start_step", minimum=0)
  check_int(shuffle_buffer_size, "shuffle_buffer_size", minimum=1)
  arrays.as_dtype(dtype)
  layout = sharding.process_layout(global_batch_size, **placement)
  data = _open(name, data_dir, image_size, augmentation)
  if isinstance(data, arrays.ArraySplits):
    return arrays.train_batches(data, layout, seed=seed, start_step=start_step, dtype=dtype)
  options = dict(seed=seed, start_step=start_step, shuffle_buffer_size=shuffle_buffer_size, cache=cache)
  return _tfds_pipeline().train_iterator(data, layout, dtype=dtype, num_threads=num_threads, **options)


def eval_iterator(
  name: str,
  *,
  global_batch_size: int,
  image_size: int | None = None,
  dtype: str = "float32",
  data_dir: str | None = None,
  cache: bool = False,
  crop_padding: int = defaults.CROP_PADDING,
  augmentation: str | None = None,
  num_threads: int | None = None,
  **placement: int | None,
) -> Iterator[arrays.Batch]:
  """Evaluation batches of this process, with a `(D, b)` bool `mask`: the split exactly once in total.

  Every process yields `ceil(N_eval / B)` batches; padded examples have zero images, label 0 and `mask`
  False. Sum `mask`-weighted metrics over devices and processes and divide by the sum of `mask`.
  Arguments as for `train_iterator`; `cache` keeps the preprocessed images after the first pass;
  `crop_padding` (Inception crops): the centre crop keeps `S / (S + crop_padding)` of the shorter side.
  """
  check_int(crop_padding, "crop_padding", minimum=0)
  arrays.as_dtype(dtype)
  layout = sharding.process_layout(global_batch_size, **placement)
  data = _open(name, data_dir, image_size, augmentation)
  if isinstance(data, arrays.ArraySplits):
    return arrays.eval_batches(data, layout, dtype=dtype)
  options = dict(dtype=dtype, num_threads=num_threads, crop_padding=crop_padding, cache=cache)
  return _tfds_pipeline().eval_iterator(data, layout, **options)


def load_arrays(
  name: str, *, data_dir: str | None = None, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """`(x_train, y_train, x_test, y_test)`: normalised float32 images, int32 labels.

  For "digits", "mnist1d" and TFDS data sets of fixed-size images ("cifar10", "mnist"); not for "fake".
  """
  data = _open(name, data_dir, image_size, None)
  splits = data if isinstance(data, arrays.ArraySplits) else _tfds_pipeline().load_arrays(data)
  if not all(isinstance(array, np.ndarray) for array in splits[:4]):
    raise InputError("dataset", f"{name!r} is generated batch by batch: use `train_iterator`.")
  return tuple(splits[:4])
