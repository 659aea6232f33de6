"""ResNet-50 with LARS: the paper's ResNet-50 column (You, Gitman & Ginsburg 2017).

Command (B = 32768 on 8 H100s: 16 micro-batches of 256 per GPU):
  python train.py --config=configs/resnet50_lars.py:32768 --config.grad_accum_steps=16 \
      --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/resnet50_lars_32k
TPU v3-256 (32 hosts, 256 cores, 128 images per core): the same command on every host without
--config.grad_accum_steps.
Hardware:  8 GPUs or a TPU pod slice; ImageNet prepared with TFDS in data_dir.
Time:      100 epochs of ResNet-50: about 30 h on 8 V100s, under an hour on a TPU v3-256 (not measured).
Expected:  ImageNet top-1 after 100 epochs (paper; γ_0, warm-up epochs in brackets):
           256: 73.8 (4) | 1K: 73.3 (9, 5) | 8K: 73.5 (30, 5) | 16K: 72.9 (33, 12) | 32K: 72.5 (40, 12);
           200 epochs at 16K: 75.5. The paper used minimal augmentation; this config uses the input
           pipeline's Inception crops, which usually add accuracy (not measured here).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import _imagenet


def get_config(batch_size: str = "8192") -> ml_collections.ConfigDict:
  """ResNet-50 + LARS at global batch ``batch_size`` (γ_0 and warm-up from the paper's table)."""
  config = _imagenet.imagenet_config(model="resnet50", batch_size=int(batch_size), optimizer="lars")
  config.recipe = "resnet50_lars"
  config.learning_rate = placeholder(float)
  config.warmup_epochs = placeholder(float)
  return config
