"""Finding a prepared TFDS image-classification data set, its splits, and each process's part."""

import dataclasses
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import sharding

TRAIN_SPLIT = "train"
# The first of these that the data set has is its evaluation split.
EVAL_SPLITS = ("validation", "test")


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS data set is known to TFDS but its files are not in the data directory."""


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """A TFDS data set with an image feature and a class label.

  Attributes:
    builder: the TFDS builder, pointing at the prepared files.
    image_key: name of the image feature (from the builder's supervised keys).
    label_key: name of the label feature.
  """

  builder: tfds.core.DatasetBuilder
  image_key: str
  label_key: str

  @property
  def name(self) -> str:
    return self.builder.name

  @property
  def num_classes(self) -> int:
    return self.builder.info.features[self.label_key].num_classes

  @property
  def image_shape(self) -> tuple[int | None, ...]:
    """Stored shape, `(None, None, C)` for images of varying size."""
    return tuple(self.builder.info.features[self.image_key].shape)

  @property
  def encoding_format(self) -> str | None:
    """ "jpeg", "png" or None (TFDS's default, PNG) for the stored image bytes."""
    return self.builder.info.features[self.image_key].encoding_format

  @property
  def eval_split(self) -> str:
    """ "validation" if the data set has it, else "test" (mocked data sets have no split list)."""
    splits = self.builder.info.splits
    if not splits:
      return EVAL_SPLITS[0]
    for split in EVAL_SPLITS:
      if split in splits:
        return split
    raise ValueError(
      f"TFDS data set {self.name!r} has none of the evaluation splits {EVAL_SPLITS}: {list(splits)}."
    )

  def num_examples(self, split: str) -> int:
    """Number of examples of `split`, from the metadata (or the data set's cardinality if absent)."""
    if split in self.builder.info.splits:
      return self.builder.info.splits[split].num_examples
    return int(self.read(split, encoded=False).cardinality())

  def read(self, split: str, *, encoded: bool) -> tf.data.Dataset:
    """Examples `{"image", "label" (int32)}` of `split` in stored order, images still encoded if asked.

    Raises:
      DatasetNotPreparedError: if the files are not in the data directory.
    """
    decoders = {self.image_key: tfds.decode.SkipDecoding()} if encoded else None
    read_config = tfds.ReadConfig(try_autocache=False, add_tfds_id=False)
    try:
      dataset = self.builder.as_dataset(
        split=split, shuffle_files=False, decoders=decoders, read_config=read_config
      )
    except AssertionError as error:  # what TFDS raises when the files are missing.
      raise DatasetNotPreparedError(not_prepared_message(self.builder)) from error
    return dataset.map(
      lambda example: {
        "image": example[self.image_key],
        "label": tf.cast(example[self.label_key], tf.int32),
      }
    )


def process_split(split: str, layout: sharding.ProcessLayout) -> str:
  """This process's part of `split`: disjoint parts that cover the split, sizes differing by <= 1."""
  return tfds.split_for_jax_process(
    split, process_index=layout.process_index, process_count=layout.process_count
  )


def not_prepared_message(builder: tfds.core.DatasetBuilder) -> str:
  """How to prepare `builder`'s data set, naming the directory that was searched."""
  # builder.data_dir is <root>/<name>[/<config>]/<version>.
  name, root = builder.name, os.path.dirname(os.path.dirname(builder.data_dir.rstrip("/")))
  if builder.builder_config is not None:
    name, root = f"{name}/{builder.builder_config.name}", os.path.dirname(root)
  lines = [
    f"TFDS data set {name!r} is not prepared: no files in {builder.data_dir} (data_dir={root}). "
    "Prepare it once, where the data can be read (or downloaded), with",
    f"  tfds build {name} --data_dir={root}",
    "and pass the same data_dir (or set TFDS_DATA_DIR). Nothing is downloaded at run time.",
  ]
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    manual_dir = os.path.join(root, "downloads", "manual")
    lines += [
      f"{builder.name!r} needs a manual download first: put the archives in {manual_dir} "
      "(or pass --manual_dir=DIR to tfds build). TFDS says:",
      builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip(),
    ]
  return "\n".join(lines)


def open_source(name: str, data_dir: str | None) -> TfdsSource:
  """Opens a prepared TFDS image-classification data set by name.

  Args:
    name: a TFDS name, optionally with config and version (`"imagenette/320px-v2"`).
    data_dir: directory holding prepared TFDS data sets; None for TFDS's default
      (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).

  Returns:
    The `TfdsSource`.

  Raises:
    ValueError: if TFDS does not know `name`, or the data set has no (image, label) supervised keys.
    DatasetNotPreparedError: if its files are not under `data_dir` (nothing is downloaded).
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise ValueError(
      f"Unknown data set `name`={name!r}: neither an in-memory data set of input_pipeline nor a "
      "TFDS data set (see `tfds.list_builders()`)."
    ) from error
  keys = builder.info.supervised_keys
  if not keys or len(keys) != 2 or keys[0] not in builder.info.features:
    raise ValueError(
      f"TFDS data set {name!r} is not an image classification data set: its supervised keys are "
      f"{keys!r}, expected (image, label)."
    )
  source = TfdsSource(builder, image_key=keys[0], label_key=keys[1])
  if not builder.info.splits:  # nothing recorded on disk: the files may be missing (or mocked).
    source.read(TRAIN_SPLIT, encoded=False)
  return source
