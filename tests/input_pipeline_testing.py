"""A tiny TFDS image data set, built from JPEGs in a temporary directory, for input pipeline tests.

Example `i` (a global id: training ids 0..36, validation ids 37..49) is a solid-colour JPEG whose
size varies with `i`: channel `colour(i) = i mod 3` holds `40 + 4 i`, the other channels 10, so any
crop, flip or resize of it keeps the colour, and both its colour and its id can be read back from a
preprocessed image (`decode_ids`). Its label is its colour, except for every fourth example
(`i mod 4 == 3`), labelled `colour + 1 mod 3`: a classifier "argmax of the channel means" is right
exactly on the other examples, which gives evaluation tests a known accuracy below 1.
"""

from typing import ClassVar

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import preprocessing

NUM_TRAIN = 37
NUM_EVAL = 13
NUM_CLASSES = 3
NAME = "lars_tiny_jpeg"


def colour(example_id: int) -> int:
  return example_id % NUM_CLASSES


def label(example_id: int) -> int:
  return (colour(example_id) + (example_id % 4 == 3)) % NUM_CLASSES


def image(example_id: int) -> np.ndarray:
  height, width = 24 + (7 * example_id) % 25, 24 + (11 * example_id) % 25
  pixels = np.full((height, width, 3), 10, np.uint8)
  pixels[..., colour(example_id)] = 40 + 4 * example_id
  return pixels


def encode_jpeg(pixels: np.ndarray, quality: int = 100) -> bytes:
  return tf.io.encode_jpeg(pixels, quality=quality, chroma_downsampling=False).numpy()


class LarsTinyJpeg(tfds.core.GeneratorBasedBuilder):
  """50 solid-colour JPEGs of varying size in 3 classes (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
          "id": tfds.features.Scalar(dtype=np.int64),
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
      "train": self._generate_examples(range(NUM_TRAIN)),
      "validation": self._generate_examples(range(NUM_TRAIN, NUM_TRAIN + NUM_EVAL)),
    }

  def _generate_examples(self, ids):
    for example_id in ids:
      # Encoded here (quality 100, no chroma subsampling) so the colours survive exactly enough.
      yield (
        example_id,
        {"image": encode_jpeg(image(example_id)), "label": label(example_id), "id": example_id},
      )


def build(data_dir: str) -> None:
  """Writes the data set's TFRecords under `data_dir` (no network)."""
  tfds.disable_progress_bar()
  LarsTinyJpeg(data_dir=data_dir).download_and_prepare()


def channel_values(images: np.ndarray) -> np.ndarray:
  """Mean 0..255 value of every channel of every normalised RGB image, `(..., 3)`."""
  mean, stddev = preprocessing.MEAN_RGB, preprocessing.STDDEV_RGB
  means = np.asarray(images, np.float32).mean(axis=(-3, -2))
  return means * np.asarray(stddev) + np.asarray(mean)


def decode_ids(images: np.ndarray) -> np.ndarray:
  """The example id of every served image (see `image`)."""
  return np.rint((channel_values(images).max(axis=-1) - 40) / 4).astype(np.int64)


def predict(images: np.ndarray) -> np.ndarray:
  """The "argmax of the channel means" classifier of the module docstring."""
  return np.asarray(images, np.float32).mean(axis=(-3, -2)).argmax(axis=-1)


GREY_NAME = "lars_tiny_grey"
GREY_SIZES = {"small": (60, 20), "large": (8192, 256)}  # (train, test) examples per config.


class LarsTinyGrey(tfds.core.GeneratorBasedBuilder):
  """Fixed-size 28x28 grey PNGs, 10 classes: example `i` is the constant image `i mod 256`, label `i % 10`."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS: ClassVar = [tfds.core.BuilderConfig(name=name) for name in GREY_SIZES]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(28, 28, 1)), "label": tfds.features.ClassLabel(num_classes=10)}
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    num_train, num_test = GREY_SIZES[self.builder_config.name]
    return {
      "train": self._generate_examples(range(num_train)),
      "test": self._generate_examples(range(num_train, num_train + num_test)),
    }

  def _generate_examples(self, ids):
    for example_id in ids:
      yield example_id, {"image": np.full((28, 28, 1), example_id % 256, np.uint8), "label": example_id % 10}


def build_grey(data_dir: str, config: str = "small") -> str:
  """Writes the grey data set's TFRecords under `data_dir`; returns its TFDS name."""
  tfds.disable_progress_bar()
  LarsTinyGrey(data_dir=data_dir, config=config).download_and_prepare()
  return f"{GREY_NAME}/{config}"
