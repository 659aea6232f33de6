"""Fields shared by the ImageNet recipes (not a config itself: the recipes start from it)."""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import default


def imagenet_config(*, model: str, batch_size: int, optimizer: str) -> ml_collections.ConfigDict:
  """The default config moved to ImageNet: 100 epochs, bf16 activations, TFDS imagenet2012.

  Args:
    model: a name in models.MODELS.
    batch_size: the global batch B of one optimizer step.
    optimizer: a name in training.optimizers.OPTIMIZERS.
  """
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
  return config
