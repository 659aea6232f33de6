"""AlexNet (local response normalisation, no batch norm) with LARS: the paper's AlexNet column.

Command:   python train.py --config=configs/alexnet_lars.py:8192 --config.grad_accum_steps=4 \
             --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/alexnet_lars_8k
Hardware:  8 GPUs of 80 GB (4 micro-batches of 256 each), or a TPU pod slice running the same command on
           every host (no distributed flags); ImageNet prepared with TFDS in data_dir.
Expected:  ImageNet top-1 after 100 epochs: the paper's figure for the batch size (`PAPER` below, with
           its γ_0). Other batch sizes need --config.learning_rate.
"""

import ml_collections

from configs import _imagenet

# You, Gitman & Ginsburg 2017 (arXiv:1708.03888), AlexNet with LARS, 2 warm-up epochs:
# global batch -> (γ_0, ImageNet top-1 %).
PAPER = {512: (2.0, 58.7), 4096: (10.0, 58.5), 8192: (10.0, 58.2), 16384: (14.0, 55.0), 32768: (14.0, 46.9)}


def get_config(batch_size: str = "8192") -> ml_collections.ConfigDict:
  """AlexNet + LARS at global batch ``batch_size`` (γ_0 from `PAPER`)."""
  config = _imagenet.imagenet_config(model="alexnet", batch_size=int(batch_size), optimizer="lars")
  config.warmup_epochs = 2.0
  _imagenet.set_row(config, PAPER, ("learning_rate", "expected_top1"))
  config.lars_mask = "every_leaf"  # No batch norm: plain SGD at γ_0 = 10 would wreck the biases.
  return config
