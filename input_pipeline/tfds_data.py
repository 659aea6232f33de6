"""A prepared TFDS image-classification data set, opened from its metadata without importing TensorFlow."""

import importlib.util
import math
import os
from typing import Any, NamedTuple

from input_pipeline import defaults
from input_pipeline.validation import InputError

TRAIN_SPLIT = "train"
EVAL_SPLITS = ("validation", "test")  # the first of these that a data set has is its evaluation split.
# Augmentations (preprocessing.py); those in ENCODED decode the image bytes, of images of any size.
AUGMENTATIONS = ("inception", "inception_unfused", "pad_crop_flip", "pad_crop", "none")
ENCODED = ("inception", "inception_unfused")
DEFAULT_AUGMENTATIONS = {"cifar10": "pad_crop_flip", "cifar100": "pad_crop_flip"}


class TfdsSource(NamedTuple):
  """A TFDS builder with its (image, label) keys, the augmentation and the served side (None: stored)."""

  builder: Any  # tfds.core.DatasetBuilder
  image_key: str
  label_key: str
  augmentation: str
  image_size: int | None
  eval_split: str
  image_shape: tuple[int | None, ...]  # stored: `(None, None, C)` for images of varying size.

  def num_examples(self, split: str) -> int:
    if split in self.builder.info.splits:
      return self.builder.info.splits[split].num_examples
    tfds_pipeline = importlib.import_module("input_pipeline.tfds_pipeline")  # mock_data records no sizes.
    return int(tfds_pipeline.read(self, split).cardinality())

  def cached(self, split: str, cache: bool | None, process_count: int) -> bool:
    """Whether this process's records of ``split`` stay in memory after their first pass: ``cache``; for
    None, whether they fit in `defaults.CACHE_BYTES` (fixed-size images decoded, else encoded)."""
    if cache is not None:
      return cache
    if self.augmentation in ENCODED:  # Mock data records no sizes.
      held = self.builder.info.splits[split].num_bytes if split in self.builder.info.splits else 0
    else:
      held = self.num_examples(split) * math.prod(self.image_shape)
    return held <= defaults.CACHE_BYTES * process_count


def require_tfds(name: str) -> None:
  """Raises `InputError`, one line naming the extra to install, if TensorFlow Datasets is missing."""
  if any(importlib.util.find_spec(module) is None for module in ("tensorflow_datasets", "tensorflow")):
    message = f"`dataset`={name!r} is read with TensorFlow Datasets, which is not installed: "
    raise InputError("dataset", message + 'pip install -e ".[tfds]"')


def _augmentation(name: str, image: Any, augmentation: str | None) -> str:
  """`augmentation` if it applies to the image feature `image` (None: the data set's default)."""
  varying, encoding = None in image.shape[:2], image.encoding_format or "png"
  allowed = [a for a in AUGMENTATIONS if a in ENCODED or not varying]
  allowed = [a for a in allowed if a != "inception" or encoding == "jpeg"]  # fused JPEG decoding.
  if augmentation is None:
    return allowed[0] if varying else DEFAULT_AUGMENTATIONS.get(name, "none")
  if augmentation not in allowed:
    kind = f"{'varying' if varying else 'fixed'}-size {encoding} images"
    message = f"`augmentation` for {name!r} ({kind}) must be None or one of {allowed}, got {augmentation!r}."
    raise InputError("augmentation", message)
  return augmentation


def open_source(
  name: str, data_dir: str | None, augmentation: str | None, image_size: int | None
) -> TfdsSource:
  """The TFDS data set `name` ("imagenette/320px-v2") prepared in `data_dir` (None: TFDS's default); an
  `InputError` if TFDS is missing, the data set unknown, not (image, label), not prepared (nothing is
  downloaded), or the augmentation does not apply to its images."""
  require_tfds(name)
  import tensorflow_datasets as tfds  # without TensorFlow.

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise InputError("dataset", f"Unknown data set {name!r}: neither in memory nor in TFDS.") from None
  info, keys = builder.info, builder.info.supervised_keys
  if not keys or len(keys) != 2 or keys[0] not in info.features:
    raise InputError("dataset", f"{name!r} is not an image classification data set (supervised keys {keys}).")
  # tfds.testing.mock_data records no splits either, but points the builder away from `data_dir`.
  root = os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
  if not info.splits and os.path.realpath(builder.data_dir).startswith(os.path.realpath(root)):
    raise InputError("dataset", not_prepared_message(builder, root))
  eval_splits = [split for split in EVAL_SPLITS if split in info.splits or not info.splits]
  if not eval_splits:
    raise InputError("dataset", f"{name!r} has none of the evaluation splits {EVAL_SPLITS}.")
  augmentation = _augmentation(builder.name, info.features[keys[0]], augmentation)
  size = defaults.IMAGE_SIZE if image_size is None and augmentation in ENCODED else image_size
  shape = tuple(info.features[keys[0]].shape)
  return TfdsSource(builder, keys[0], keys[1], augmentation, size, eval_splits[0], shape)


def not_prepared_message(builder: Any, root: str) -> str:
  """How to prepare `builder`'s data set, naming the directory searched."""
  name = builder.name + (f"/{builder.builder_config.name}" if builder.builder_config else "")
  message = (
    f"TFDS data set {name!r} is not prepared: no files in {builder.data_dir}. Prepare it once with "
    f"`tfds build {name} --data_dir={root}`; nothing is downloaded at run time."
  )
  if instructions := getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    manual = os.path.join(root, "downloads", "manual")
    message += f" Put its archives in {manual} first: {' '.join(instructions.split())}"
  return message
