"""`tf.data` pipelines over TFDS image-classification data sets. Process `p` of `P` reads its part of each
split (`tfds.split_for_jax_process`: disjoint, covering, sizes within one). Training: with `S = N_train // B`
steps per epoch, epoch `e` shuffles the part (`shuffle_buffer_size`, seed `k_e = fold_in([seed, p], e)`),
keeps its first `S B / P` examples and augments the `i`-th with the seed `fold_in(k_e, i)`: a function of
`(seed, p, P, step)`; `start_step = s` skips `(s mod S) B / P` examples of epoch `s // S` before decoding
them: a restart needs no iterator state. Evaluation: `ceil(N_eval / B)` steps on every process, its part
then zero images with `mask` False. Only decoding, crops and flips are per example; resizing fixed-size
images, normalising and casting are per batch. TensorFlow serves the host only: GPUs are hidden from it.
"""

import contextlib
import os

# Set before TensorFlow's first import (users may override): no INFO lines, no oneDNN notice; the
# pipelines do no matrix products, where oneDNN's optimisations would matter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import arrays, defaults, preprocessing, sharding, tfds_data

with contextlib.suppress(RuntimeError):  # raised if TensorFlow's devices are already initialised.
  tf.config.set_visible_devices([], "GPU")


def read(source: tfds_data.TfdsSource, split: str, encoded: bool = False) -> tf.data.Dataset:
  """Examples `{"image", "label": int32}` of `split` in stored order, images still encoded if asked."""
  decoders = {source.image_key: tfds.decode.SkipDecoding()} if encoded else None
  config = tfds.ReadConfig(try_autocache=False, add_tfds_id=False)
  dataset = source.builder.as_dataset(split=split, shuffle_files=False, decoders=decoders, read_config=config)
  image_key, label_key = source.image_key, source.label_key
  return dataset.map(lambda ex: {"image": ex[image_key], "label": tf.cast(ex[label_key], tf.int32)})


def _batches(dataset, layout, image_size, dtype, num_threads) -> tf.data.Dataset:
  """Batches of `dataset`, resized and normalised (zero where `mask` is False), shaped `(D, b, ...)`."""

  def finish(batch):
    image = preprocessing.normalize(batch["image"], image_size, tf.as_dtype(arrays.as_dtype(dtype).name))
    if "mask" in batch:
      image = tf.where(tf.reshape(batch["mask"], [-1, 1, 1, 1]), image, tf.zeros_like(image))
    batch, devices = {**batch, "image": image}, layout.local_device_count
    return {key: tf.reshape(value, [devices, -1, *value.shape[1:]]) for key, value in batch.items()}

  options = tf.data.Options()  # deterministic, and a bounded private thread pool (default: usable CPUs).
  options.deterministic, options.threading.max_intra_op_parallelism = True, 1
  options.threading.private_threadpool_size = num_threads or len(os.sched_getaffinity(0))
  dataset = dataset.batch(layout.per_process_batch_size, drop_remainder=True).map(finish, tf.data.AUTOTUNE)
  return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def train_dataset(
  records: tf.data.Dataset,
  *,
  layout: sharding.ProcessLayout,
  steps_per_epoch: int,
  seed: int,
  start_step: int = 0,
  augmentation: str = "inception",
  image_size: int | None = defaults.IMAGE_SIZE,
  channels: int = 3,
  dtype: str = "float32",
  shuffle_buffer_size: int = defaults.SHUFFLE_BUFFER_SIZE,
  num_threads: int | None = None,
) -> tf.data.Dataset:
  """The endless training pipeline (module docstring) over this process's `records`, `{"image": encoded bytes
  or uint8, "label": int32}` in a fixed order."""
  augment = preprocessing.AUGMENTATIONS[augmentation][0]
  batch_size = layout.per_process_batch_size
  start_epoch, start_offset = divmod(start_step, steps_per_epoch)
  base_key = tf.constant([seed, layout.process_index], tf.int64)
  fold_in = tf.random.experimental.stateless_fold_in

  def epoch_examples(epoch):  # k_e = fold_in([seed, p], e): the shuffle and each example's seed.
    key = fold_in(base_key, epoch)
    shuffle_seed = tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)
    first = tf.where(epoch == start_epoch, tf.constant(start_offset * batch_size, tf.int64), 0)
    examples = records.shuffle(shuffle_buffer_size, seed=shuffle_seed).take(steps_per_epoch * batch_size)
    if augment is None:
      return examples.skip(first)
    return examples.enumerate().skip(first).map(lambda i, ex: (fold_in(key, i), ex))

  def preprocess(example_seed, example):
    return {**example, "image": augment(example["image"], example_seed, image_size, channels)}

  dataset = tf.data.Dataset.range(start_epoch, 2**40).flat_map(epoch_examples)  # endless.
  dataset = dataset if augment is None else dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  return _batches(dataset, layout, image_size, dtype, num_threads)


def _records(source: tfds_data.TfdsSource, split: str, layout, cache: bool | None) -> tf.data.Dataset:
  """This process's part of `split`, kept in memory after its first pass if `source.cached` says so."""
  index, count = layout.process_index, layout.process_count
  part = tfds.split_for_jax_process(split, process_index=index, process_count=count)
  records = read(source, part, encoded=source.augmentation in tfds_data.ENCODED)
  return records.cache() if source.cached(split, cache, count) else records


def train_iterator(source: tfds_data.TfdsSource, layout: sharding.ProcessLayout, **options):
  """NumPy batches of `train_dataset` over this process's part of the training split."""
  steps = source.num_examples(tfds_data.TRAIN_SPLIT) // layout.global_batch_size
  if steps < 1:
    raise tfds_data.InputError("global_batch_size", "`global_batch_size` exceeds the training split.")
  channels, augmentation, size = source.image_shape[-1], source.augmentation, source.image_size
  options.update(steps_per_epoch=steps, augmentation=augmentation, image_size=size, channels=channels)
  records = _records(source, tfds_data.TRAIN_SPLIT, layout, options.pop("cache"))
  dataset = train_dataset(records, layout=layout, **options)
  return dataset.as_numpy_iterator()


def eval_dataset(source: tfds_data.TfdsSource, layout, *, dtype, crop_padding, cache):
  """This process's part of the evaluation split, preprocessed, padded to `ceil(N_eval / B)` batches; each
  pass over the returned iterable reads the split again (from memory if cached)."""
  augment = preprocessing.AUGMENTATIONS[source.augmentation][1]
  channels, size = source.image_shape[-1], source.image_size

  def preprocess(example):
    image = example["image"] if augment is None else augment(example["image"], size, crop_padding, channels)
    return {"image": image, "label": example["label"], "mask": tf.constant(True)}

  records = _records(source, source.eval_split, layout, cache)
  dataset = records.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  zeros = {key: tf.zeros(spec.shape, spec.dtype) for key, spec in dataset.element_spec.items()}
  num_batches = sharding.num_eval_batches(source.num_examples(source.eval_split), layout.global_batch_size)
  dataset = dataset.concatenate(tf.data.Dataset.from_tensors(zeros).repeat())
  dataset = dataset.take(num_batches * layout.per_process_batch_size)
  return tfds.as_numpy(_batches(dataset, layout, size, dtype, None))
