"""Fields shared by the ImageNet configs (not a config itself: they start from it)."""

from collections.abc import Mapping, Sequence

import ml_collections
from ml_collections.config_dict import placeholder

from configs import default
from input_pipeline import defaults


def imagenet_config(*, model: str, batch_size: int, optimizer: str) -> ml_collections.ConfigDict:
  """The default config moved to ImageNet: 100 epochs, bf16 activations, TFDS imagenet2012."""
  config = default.get_config()
  config.dataset = "imagenet2012"  # Prepared beforehand in --config.data_dir (no download).
  config.image_size = 224
  config.model = model
  config.optimizer = optimizer
  config.batch_size = batch_size
  config.half_precision = True  # bfloat16 activations; parameters and LARS norms stay float32.
  config.num_epochs = 100.0  # The paper's length for every table entry (You, Gitman & Ginsburg 2017).
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.eval_batch_size = placeholder(int)  # None: one micro-batch.
  config.log_every_steps = 100
  config.eval_every_steps = -1  # Once per epoch.
  config.diagnostics_every_steps = 500
  config.checkpoint_every_steps = 2000
  config.expected_top1 = None  # Each ImageNet config states its own.
  if model.startswith("alexnet"):  # Caffe's AlexNet crop; evaluation: the centre 227 of 256.
    config.image_size, config.crop_padding = defaults.ALEXNET_IMAGE_SIZE, defaults.ALEXNET_CROP_PADDING
  return config


def set_row(config: ml_collections.ConfigDict, table: Mapping[int, Sequence[float]], fields: Sequence[str]):
  """Sets ``fields`` from ``table``'s row for ``config.batch_size``; without one, asks for learning_rate."""
  if config.batch_size not in table:
    config.learning_rate = placeholder(float)
    return
  for field, value in zip(fields, table[config.batch_size], strict=True):
    config[field] = value
