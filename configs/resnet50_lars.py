"""ResNet-50 with LARS: the paper's ResNet-50 column (You, Gitman & Ginsburg 2017).

Command:   python train.py --config=configs/resnet50_lars.py:32768 --config.grad_accum_steps=16 \
             --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/resnet50_lars_32k
Hardware:  8 H100s (16 micro-batches of 256 each), or a TPU v3-256 running the same command on every
           host without grad_accum_steps; ImageNet prepared with TFDS in data_dir.
Expected:  ImageNet top-1 after 100 epochs: the paper's figure for the batch size (`PAPER` below, with
           its γ_0 and warm-up). Other batch sizes need --config.learning_rate. The paper used minimal
           augmentation; this config uses Inception crops.
"""

import ml_collections

from configs import _imagenet

# You, Gitman & Ginsburg 2017 (arXiv:1708.03888), ResNet-50 with LARS (5 warm-up epochs where the
# paper gives none): global batch -> (γ_0, warm-up epochs, ImageNet top-1 %).
PAPER = {256: (4, 5, 73.8), 1024: (9, 5, 73.3), 8192: (30, 5, 73.5)}
PAPER |= {16384: (33, 12, 72.9), 32768: (40, 12, 72.5)}


def get_config(batch_size: str = "8192") -> ml_collections.ConfigDict:
  """ResNet-50 + LARS at global batch ``batch_size`` (γ_0 and warm-up from `PAPER`)."""
  config = _imagenet.imagenet_config(model="resnet50", batch_size=int(batch_size), optimizer="lars")
  config.warmup_epochs = 5.0
  _imagenet.set_row(config, PAPER, ("learning_rate", "warmup_epochs", "expected_top1"))
  return config
