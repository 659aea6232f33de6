"""The public entry points, whatever the data set: names in `ARRAY_DATASETS` are served from memory in
NumPy; any other is a TFDS data set, checked without TensorFlow, batched by `tf.data` (TensorFlow then)."""

import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np

from input_pipeline import arrays, defaults, digits, mnist1d, sharding, tfds_data
from input_pipeline.validation import InputError, check_int

# In-memory data sets: `load(image_size=..., data_dir=...) -> arrays.ArraySplits`.
ARRAY_DATASETS = {"digits": digits.load, "mnist1d": mnist1d.load, "fake": arrays.load_fake}


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
  if image_size is not None:
    check_int(image_size, "image_size", minimum=1)
  if name not in ARRAY_DATASETS:
    return tfds_data.open_source(name, data_dir, augmentation, image_size)
  if augmentation not in (None, "none"):
    message = f"`augmentation` must be None or 'none' for {name!r} (not augmented), got {augmentation!r}."
    raise InputError("augmentation", message)
  return ARRAY_DATASETS[name](image_size=image_size, data_dir=data_dir)


def get_dataset_info(
  name: str, *, data_dir: str | None = None, image_size: int | None = None, augmentation: str | None = None
) -> DatasetInfo:
  """Sizes, classes and served example shape of a data set, its arguments checked without TensorFlow.

  `name`: "digits", "mnist1d", "fake", or a TFDS data set prepared in `data_dir` (None: `$TFDS_DATA_DIR`
  or `~/tensorflow_datasets`). `image_size`: side of the served images (None: stored; 224 for Inception
  crops). `augmentation`: TFDS only, in `tfds_data.AUGMENTATIONS` (None: the data set's default).
  """
  data = _open(name, data_dir, image_size, augmentation)
  if isinstance(data, arrays.ArraySplits):
    shape = tuple(data.train_images.shape[1:])
    return DatasetInfo(name, data.num_classes, shape, len(data.train_labels), len(data.eval_labels))
  num_classes = data.builder.info.features[data.label_key].num_classes
  shape = data.image_shape if data.image_size is None else (data.image_size,) * 2 + data.image_shape[-1:]
  counts = data.num_examples(tfds_data.TRAIN_SPLIT), data.num_examples(data.eval_split)
  return DatasetInfo(name, num_classes, shape, *counts)


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
  cache: bool | None = None,
  augmentation: str | None = None,
  **placement: int | None,
) -> Iterator[arrays.Batch]:
  """Endless training batches of this process: `{"image": (D, b, ...) dtype, "label": (D, b) int32}`.

  Step `s`'s batch is a function of `(seed, s)` (for TFDS data, also of the process count), so a restart at
  `start_step=s` sees what the run would have seen. `global_batch_size` (`B`) must divide by `P D`; `dtype`:
  a key of `arrays.DTYPES`; `shuffle_buffer_size`, `cache` (keep the records in memory after the first
  epoch; None: if they fit, `tfds_data.TfdsSource.cached`): TFDS only; `placement`: `process_index`,
  `process_count`, `local_device_count` (None: JAX's).
  """
  check_int(seed, "seed", minimum=0)
  check_int(start_step, "start_step", minimum=0)
  check_int(shuffle_buffer_size, "shuffle_buffer_size", minimum=1)
  np_dtype = arrays.as_dtype(dtype)
  layout = sharding.process_layout(global_batch_size, **placement)
  data = _open(name, data_dir, image_size, augmentation)
  if isinstance(data, arrays.ArraySplits):
    return arrays.train_batches(data, layout, seed=seed, start_step=start_step, dtype=np_dtype)
  options = dict(seed=seed, start_step=start_step, shuffle_buffer_size=shuffle_buffer_size, cache=cache)
  tfds_pipeline = importlib.import_module("input_pipeline.tfds_pipeline")  # imports TensorFlow.
  return tfds_pipeline.train_iterator(data, layout, dtype=dtype, **options)


class _Passes:
  """An iterable whose every pass is a new iterator from ``start()``."""

  def __init__(self, start: Callable[[], Iterator]):
    self._start = start

  def __iter__(self) -> Iterator:
    return self._start()


def eval_dataset(
  name: str,
  *,
  global_batch_size: int,
  image_size: int | None = None,
  dtype: str = "float32",
  data_dir: str | None = None,
  cache: bool | None = None,
  crop_padding: int = defaults.CROP_PADDING,
  augmentation: str | None = None,
  **placement: int | None,
) -> Iterable[arrays.Batch]:
  """Evaluation batches of this process, with a `(D, b)` bool `mask`: each pass over the returned iterable
  (`iter`) covers the split exactly once in total, all processes together.

  Every process yields `ceil(N_eval / B)` batches; padded examples have zero images, label 0 and `mask`
  False: sum `mask`-weighted metrics over devices and processes, divide by the sum of `mask`. `cache`: as
  for `train_iterator`; Inception's centre crop keeps `S / (S + crop_padding)` of the shorter side.
  """
  check_int(crop_padding, "crop_padding", minimum=0)
  np_dtype = arrays.as_dtype(dtype)
  layout = sharding.process_layout(global_batch_size, **placement)
  data = _open(name, data_dir, image_size, augmentation)
  if isinstance(data, arrays.ArraySplits):
    return _Passes(lambda: arrays.eval_batches(data, layout, dtype=np_dtype))
  tfds_pipeline = importlib.import_module("input_pipeline.tfds_pipeline")  # imports TensorFlow.
  return tfds_pipeline.eval_dataset(data, layout, dtype=dtype, crop_padding=crop_padding, cache=cache)


def load_arrays(
  name: str, *, data_dir: str | None = None, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """`(x_train, y_train, x_test, y_test)` of "digits" or "mnist1d": float32 images, int32 labels."""
  if name not in ("digits", "mnist1d"):
    raise InputError("dataset", f"`load_arrays` serves 'digits' and 'mnist1d' only, not {name!r}.")
  return tuple(_open(name, data_dir, image_size, None)[:4])
