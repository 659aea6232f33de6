"""AlexNet-BN (batch norm in place of LRN) with LARS: the paper's best-scaling AlexNet.

Command:   python train.py --config=configs/alexnet_bn_lars.py:8192 --config.grad_accum_steps=4 \
             --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/alexnet_bn_lars_8k
Hardware:  8 GPUs (4 micro-batches of 256 each; BN statistics per micro-batch, as in the paper's Caffe
           runs), or a TPU pod slice running the same command on every host; ImageNet prepared with TFDS.
Expected:  ImageNet top-1 after 100 epochs: the paper's figure for the batch size (`PAPER` below, with
           its γ_0). Other batch sizes need --config.learning_rate.
"""

import ml_collections

from configs import _imagenet

# You, Gitman & Ginsburg 2017 (arXiv:1708.03888), AlexNet-BN with LARS, 5 warm-up epochs:
# global batch -> (γ_0, ImageNet top-1 %).
PAPER = {512: (2.0, 60.2), 4096: (10.0, 60.4), 8192: (14.0, 60.1), 16384: (23.0, 59.3), 32768: (22.0, 57.8)}


def get_config(batch_size: str = "8192") -> ml_collections.ConfigDict:
  """AlexNet-BN + LARS at global batch ``batch_size`` (γ_0 from `PAPER`)."""
  config = _imagenet.imagenet_config(model="alexnet_bn", batch_size=int(batch_size), optimizer="lars")
  config.warmup_epochs = 5.0
  _imagenet.set_row(config, PAPER, ("learning_rate", "expected_top1"))
  return config
