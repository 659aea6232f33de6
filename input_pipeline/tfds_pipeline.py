"""`tf.data` pipelines over TFDS image-classification data sets: ImageNet, or any other by name.

Per-process parts. Process `p` of `P` reads only its part of each split (`tfds.split_for_jax_process`:
disjoint parts covering the split, sizes differing by at most one example).

Training order. With `S = N_train // B` steps per epoch (global, so every process agrees on it), epoch
`e` of process `p` shuffles its part with a buffer of `shuffle_buffer_size` examples and the seed
`k_e = fold_in([seed, p], e)`, keeps the first `S B / P` examples (the part holds at least that many),
and draws the crop and flip of its `i`-th example from the stateless seed `fold_in(k_e, i)`. The
stream is a pure function of `(seed, p, P, step)`: `start_step = s` starts at epoch `s // S` and skips
the first `(s mod S) B / P` examples of that epoch before decoding them (reading, not decoding, the
skipped records), so a restart needs no iterator checkpoint.

Evaluation. Every process runs `ceil(N_eval / B)` steps (see `sharding.num_eval_batches`): its part,
preprocessed, then zero images with `mask` False up to that many batches.

TensorFlow only serves the host: GPUs are hidden from it when this module is imported, and its
thread pool is private and bounded (`num_threads`).
"""

import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

import lars_optax
from input_pipeline import arrays, defaults, preprocessing, sharding, tfds_data
from input_pipeline.dataset_info import DatasetInfo


def _hide_gpus_from_tensorflow() -> None:
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow already initialised its devices; it is too late to hide them.
    pass


_hide_gpus_from_tensorflow()

# The number of epochs is unbounded in practice: the iterator is endless.
_MAX_EPOCHS = 2**40
# Data sets whose default differs from the rule in `default_augmentation`.
DEFAULT_AUGMENTATIONS = {"cifar10": "pad_crop_flip", "cifar100": "pad_crop_flip"}


def default_augmentation(source: tfds_data.TfdsSource) -> str:
  """Inception crops for images of varying size (fused when JPEG), none for fixed-size images."""
  if source.name in DEFAULT_AUGMENTATIONS:
    return DEFAULT_AUGMENTATIONS[source.name]
  if None in source.image_shape[:2]:
    return "inception" if source.encoding_format == "jpeg" else "inception_unfused"
  return "none"


def _resolve_augmentation(source: tfds_data.TfdsSource, augmentation: str | None) -> str:
  augmentation = default_augmentation(source) if augmentation is None else augmentation
  if augmentation not in preprocessing.AUGMENTATIONS:
    raise ValueError(
      f"`augmentation` must be one of {sorted(preprocessing.AUGMENTATIONS)}, got {augmentation!r}."
    )
  if augmentation == "inception" and source.encoding_format != "jpeg":
    raise ValueError(
      f"`augmentation`='inception' decodes JPEG windows, but {source.name!r} stores "
      f"{source.encoding_format or 'png'} images: use 'inception_unfused'."
    )
  if not preprocessing.AUGMENTATIONS[augmentation].encoded and None in source.image_shape[:2]:
    raise ValueError(
      f"`augmentation`={augmentation!r} needs fixed-size images, but {source.name!r} has images of "
      "varying size: use 'inception' or 'inception_unfused'."
    )
  return augmentation


def served_shape(source: tfds_data.TfdsSource, augmentation: str, image_size: int | None) -> tuple[int, ...]:
  """Shape of one preprocessed image."""
  channels = source.image_shape[-1]
  if preprocessing.AUGMENTATIONS[augmentation].encoded:
    side = preprocessing.IMAGE_SIZE if image_size is None else image_size
    return (side, side, channels)
  return source.image_shape if image_size is None else (image_size, image_size, channels)


def _options(num_threads: int | None) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = num_threads or len(os.sched_getaffinity(0))
  options.threading.max_intra_op_parallelism = 1
  return options


def _to_tf_dtype(dtype: str | np.dtype) -> tf.DType:
  return tf.as_dtype(arrays.as_dtype(dtype).name)


def _shard(batch: dict[str, tf.Tensor], local_device_count: int) -> dict[str, tf.Tensor]:
  return {key: tf.reshape(value, [local_device_count, -1, *value.shape[1:]]) for key, value in batch.items()}


def train_dataset(
  records: tf.data.Dataset,
  *,
  layout: sharding.ProcessLayout,
  steps_per_epoch: int,
  seed: int,
  start_step: int = 0,
  augmentation: str = "inception",
  image_size: int | None = preprocessing.IMAGE_SIZE,
  channels: int = 3,
  dtype: str | np.dtype = "float32",
  shuffle_buffer_size: int = defaults.SHUFFLE_BUFFER_SIZE,
  cache: bool = False,
  num_threads: int | None = None,
) -> tf.data.Dataset:
  """The endless training pipeline over this process's `records` (see the module docstring).

  Args:
    records: this process's part, `{"image": encoded bytes or uint8, "label": int32}` examples in a
      fixed order.
    layout: global batch size and this process's place.
    steps_per_epoch: `N_train // B` for the whole split.
    seed: non-negative integer.
    start_step: first step to serve.
    augmentation: a name in `preprocessing.AUGMENTATIONS`.
    image_size: side of the served images (None: keep the stored size, fixed-size data only).
    channels: channels of the images.
    dtype: image dtype, a name in `arrays.DTYPES`.
    shuffle_buffer_size: examples in the shuffle buffer.
    cache: keep `records` in memory after the first epoch (small data sets).
    num_threads: size of tf.data's private thread pool (default: the CPUs this process may use).

  Returns:
    Batches `{"image": (D, b, *image_shape) dtype, "label": (D, b) int32}`.
  """
  augment = preprocessing.AUGMENTATIONS[augmentation]
  tf_dtype = _to_tf_dtype(dtype)
  batch_size = layout.per_process_batch_size
  examples_per_epoch = steps_per_epoch * batch_size
  start_epoch, start_offset = divmod(start_step, steps_per_epoch)
  base_key = tf.constant([seed, layout.process_index], tf.int64)
  records = records.cache() if cache else records

  def epoch_examples(epoch: tf.Tensor) -> tf.data.Dataset:
    # k_e = fold_in([seed, p], e); the shuffle and every example's seed derive from it.
    key = tf.random.experimental.stateless_fold_in(base_key, epoch)
    shuffle_seed = tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)
    first = tf.where(epoch == start_epoch, tf.constant(start_offset * batch_size, tf.int64), 0)
    return (
      records.shuffle(shuffle_buffer_size, seed=shuffle_seed)
      .enumerate()
      .filter(lambda index, _: (index >= first) & (index < examples_per_epoch))
      .map(lambda index, example: (tf.random.experimental.stateless_fold_in(key, index), example))
    )

  def preprocess(example_seed: tf.Tensor, example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    image = augment.train(example["image"], example_seed, image_size, channels)
    return {"image": preprocessing.normalize(image, channels, tf_dtype), "label": example["label"]}

  dataset = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch_examples)
  dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset.map(lambda batch: _shard(batch, layout.local_device_count))
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(num_threads))


def eval_dataset(
  records: tf.data.Dataset,
  *,
  layout: sharding.ProcessLayout,
  num_batches: int,
  augmentation: str = "inception",
  image_size: int | None = preprocessing.IMAGE_SIZE,
  crop_padding: int = preprocessing.CROP_PADDING,
  channels: int = 3,
  dtype: str | np.dtype = "float32",
  cache: bool = False,
  num_threads: int | None = None,
) -> tf.data.Dataset:
  """This process's part, preprocessed for evaluation and padded to `num_batches` batches.

  Returns:
    Batches `{"image": (D, b, *image_shape) dtype, "label": (D, b) int32, "mask": (D, b) bool}`;
    padded examples have zero images, label 0 and mask False.
  """
  augment = preprocessing.AUGMENTATIONS[augmentation]
  tf_dtype = _to_tf_dtype(dtype)
  batch_size = layout.per_process_batch_size

  def preprocess(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    image = augment.eval(example["image"], image_size, crop_padding, channels)
    image = preprocessing.normalize(image, channels, tf_dtype)
    return {"image": image, "label": example["label"], "mask": tf.constant(True)}

  dataset = records.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.cache() if cache else dataset
  padding = tf.data.Dataset.from_tensors(
    {key: tf.zeros(spec.shape, spec.dtype) for key, spec in dataset.element_spec.items()}
  ).repeat()
  dataset = dataset.concatenate(padding).take(num_batches * batch_size)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset.map(lambda batch: _shard(batch, layout.local_device_count))
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(num_threads))


def _image_size(augmentation: str, image_size: int | None) -> int | None:
  if preprocessing.AUGMENTATIONS[augmentation].encoded and image_size is None:
    return preprocessing.IMAGE_SIZE
  return image_size


def dataset_info(
  name: str, *, data_dir: str | None, image_size: int | None, augmentation: str | None = None
) -> DatasetInfo:
  """`DatasetInfo` of a TFDS data set as served (see `input_pipeline.get_dataset_info`)."""
  source = tfds_data.open_source(name, data_dir)
  augmentation = _resolve_augmentation(source, augmentation)
  return DatasetInfo(
    name=name,
    num_classes=source.num_classes,
    image_shape=served_shape(source, augmentation, image_size),
    num_train=source.num_examples(tfds_data.TRAIN_SPLIT),
    num_eval=source.num_examples(source.eval_split),
  )


def train_iterator(
  name: str,
  *,
  layout: sharding.ProcessLayout,
  seed: int,
  start_step: int,
  image_size: int | None,
  dtype: str | np.dtype,
  data_dir: str | None,
  shuffle_buffer_size: int,
  cache: bool,
  augmentation: str | None,
  num_threads: int | None,
) -> Iterator[arrays.Batch]:
  """NumPy batches of `train_dataset` over this process's part of the TFDS training split."""
  source = tfds_data.open_source(name, data_dir)
  augmentation = _resolve_augmentation(source, augmentation)
  steps = lars_optax.steps_per_epoch(source.num_examples(tfds_data.TRAIN_SPLIT), layout.global_batch_size)
  records = source.read(
    tfds_data.process_split(tfds_data.TRAIN_SPLIT, layout),
    encoded=preprocessing.AUGMENTATIONS[augmentation].encoded,
  )
  dataset = train_dataset(
    records,
    layout=layout,
    steps_per_epoch=steps,
    seed=seed,
    start_step=start_step,
    augmentation=augmentation,
    image_size=_image_size(augmentation, image_size),
    channels=source.image_shape[-1],
    dtype=dtype,
    shuffle_buffer_size=shuffle_buffer_size,
    cache=cache,
    num_threads=num_threads,
  )
  return dataset.as_numpy_iterator()


def eval_iterator(
  name: str,
  *,
  layout: sharding.ProcessLayout,
  image_size: int | None,
  dtype: str | np.dtype,
  data_dir: str | None,
  cache: bool,
  crop_padding: int,
  augmentation: str | None,
  num_threads: int | None,
) -> Iterator[arrays.Batch]:
  """NumPy batches of `eval_dataset` over this process's part of the evaluation split."""
  source = tfds_data.open_source(name, data_dir)
  augmentation = _resolve_augmentation(source, augmentation)
  split = source.eval_split
  dataset = eval_dataset(
    source.read(
      tfds_data.process_split(split, layout),
      encoded=preprocessing.AUGMENTATIONS[augmentation].encoded,
    ),
    layout=layout,
    num_batches=sharding.num_eval_batches(source.num_examples(split), layout.global_batch_size),
    augmentation=augmentation,
    image_size=_image_size(augmentation, image_size),
    crop_padding=crop_padding,
    channels=source.image_shape[-1],
    dtype=dtype,
    cache=cache,
    num_threads=num_threads,
  )
  return dataset.as_numpy_iterator()


def load_arrays(name: str, *, data_dir: str | None, image_size: int | None) -> arrays.ArraySplits:
  """A TFDS data set of fixed-size images as normalised float32 NumPy arrays (small data sets)."""
  source = tfds_data.open_source(name, data_dir)
  if None in source.image_shape:
    raise ValueError(
      f"`load_arrays` needs fixed-size images, but {name!r} has images of shape "
      f"{source.image_shape}: use `train_iterator` and `eval_iterator`."
    )
  channels = source.image_shape[-1]

  def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    dataset = source.read(split, encoded=False).map(
      lambda example: (
        preprocessing.normalize(
          preprocessing.resize_if_needed(example["image"], image_size), channels, tf.float32
        ),
        example["label"],
      ),
      num_parallel_calls=tf.data.AUTOTUNE,
    )
    images, labels = zip(*dataset.batch(4096).as_numpy_iterator(), strict=True)
    return np.concatenate(images), np.concatenate(labels)

  return arrays.ArraySplits(*load(tfds_data.TRAIN_SPLIT), *load(source.eval_split), source.num_classes)
