"""AlexNet (local response normalisation, no batch norm) with LARS: the paper's Table recipe.

Command (B = 8192 on 8 GPUs of 80 GB: 4 micro-batches of 256 per GPU):
  python train.py --config=configs/alexnet_lars.py:8192 --config.grad_accum_steps=4 \
      --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/alexnet_lars_8k
TPU v3-32 pod slice (4 hosts; run the same command on every host, no distributed flags):
  python train.py --config=configs/alexnet_lars.py:32768 --config.data_dir=gs://... --workdir=gs://...
Hardware:  one 8-GPU machine or a TPU pod slice; ImageNet prepared with TFDS in data_dir.
Time:      AlexNet is cheap per image; 100 epochs are about a day on 8 V100s (not measured here).
Expected:  ImageNet top-1 after 100 epochs (paper, γ_0 in brackets, 2 warm-up epochs):
           512: 58.7 (2) | 4K: 58.5 (10) | 8K: 58.2 (10) | 16K: 55.0 (14) | 32K: 46.9 (14).
Other batch sizes need --config.learning_rate (the paper tabulates no γ_0 for them).
Mask:      every layer's weights and biases are adapted (lars_mask "every_leaf", the paper's Algorithm 1 on
           every layer): without batch norm, biases stepped by plain SGD at γ_0 = 10 wreck training (README
           "Results at small scale").
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import _imagenet
from input_pipeline import defaults


def get_config(batch_size: str = "8192") -> ml_collections.ConfigDict:
  """AlexNet + LARS at global batch ``batch_size`` (γ_0 and warm-up from the paper's table)."""
  config = _imagenet.imagenet_config(model="alexnet", batch_size=int(batch_size), optimizer="lars")
  config.recipe = "alexnet_lars"
  config.image_size = defaults.ALEXNET_IMAGE_SIZE  # Caffe's AlexNet crop.
  config.crop_padding = defaults.ALEXNET_CROP_PADDING  # Evaluation: centre 227 of 256.
  config.learning_rate = placeholder(float)  # From the recipe's table unless given.
  config.warmup_epochs = placeholder(float)
  config.lars_mask = "every_leaf"  # No batch norm: each bias gets its own trust ratio.
  return config
