"""AlexNet-BN (batch norm in place of LRN) with LARS: the paper's best-scaling recipe.

Command (B = 8192 on 8 GPUs: 4 micro-batches of 256 per GPU; BN statistics per micro-batch as in the
paper's Caffe runs):
  python train.py --config=configs/alexnet_bn_lars.py:8192 --config.grad_accum_steps=4 \
      --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/alexnet_bn_lars_8k
TPU pod slice: the same command on every host, e.g. --config=configs/alexnet_bn_lars.py:32768.
Hardware:  one 8-GPU machine or a TPU pod slice; ImageNet prepared with TFDS in data_dir.
Time:      about a day on 8 V100s for 100 epochs (not measured here).
Expected:  ImageNet top-1 after 100 epochs (paper, γ_0 in brackets, 5 warm-up epochs):
           512: 60.2 (2) | 4K: 60.4 (10) | 8K: 60.1 (14) | 16K: 59.3 (23) | 32K: 57.8 (22);
           200 epochs at 32K: 59.9.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import _imagenet
from input_pipeline import defaults


def get_config(batch_size: str = "8192") -> ml_collections.ConfigDict:
  """AlexNet-BN + LARS at global batch ``batch_size`` (γ_0 and warm-up from the paper's table)."""
  config = _imagenet.imagenet_config(model="alexnet_bn", batch_size=int(batch_size), optimizer="lars")
  config.recipe = "alexnet_bn_lars"
  config.image_size = defaults.ALEXNET_IMAGE_SIZE  # Caffe's AlexNet crop.
  config.crop_padding = defaults.ALEXNET_CROP_PADDING  # Evaluation: centre 227 of 256.
  config.learning_rate = placeholder(float)
  config.warmup_epochs = placeholder(float)
  return config
