"""Fields shared by the ImageNet configs (not a config itself: they start from it)."""

from collections.abc import Mapping, Sequence

import ml_collections
from ml_collections.config_dict import placeholder

from configs import default
from input_pipeline import defaults


def imagenet_config(*, model: str, batch_size: int, optimizer: str) -> ml_collections.ConfigDict:
  """The default config moved to ImageNet: 100 epochs, bf16 activations, TFDS imagenet2012."""
  config = default.get_config()
  # ImageNet prepared beforehand in data_dir (no download); the paper's 100 epochs for every table entry.
  config.update(dataset="imagenet2012", image_size=224, model=model, optimizer=optimizer, half_precision=True)
  config.update(batch_size=batch_size, num_epochs=100.0, expected_top1=None)  # Each config states its top-1.
  config.update(log_every_steps=100, diagnostics_every_steps=500, checkpoint_every_steps=2000)
  config.eval_every_steps = -1  # Every epoch: 50,000 images, about 1% of an epoch's work.
  if model.startswith("alexnet"):  # Caffe's AlexNet crop; evaluation: the centre 227 of 256.
    config.image_size, config.crop_padding = defaults.ALEXNET_IMAGE_SIZE, defaults.ALEXNET_CROP_PADDING
  return config


def set_row(config: ml_collections.ConfigDict, table: Mapping[int, Sequence[float]], fields: Sequence[str]):
  """Sets ``fields`` from ``table``'s row for ``config.batch_size``; without one, asks for learning_rate."""
  row = table.get(config.batch_size)
  config.update(dict(zip(fields, row, strict=True)) if row else {"learning_rate": placeholder(float)})
