"""AlexNet-BN without LARS: momentum SGD, linear LR scaling and warm-up (the paper's baseline).

Command:   python train.py --config=configs/alexnet_bn_sgd.py:8192 --config.grad_accum_steps=4 \
             --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/alexnet_bn_sgd_8k
Hardware:  as configs/alexnet_bn_lars.py.
Expected:  ImageNet top-1 after 100 epochs: the paper's figure for the batch size (`PAPER` below).
           LR: 0.01 per 256 images, scaled linearly; 5 warm-up epochs.
"""

import ml_collections

from configs import _imagenet

# You, Gitman & Ginsburg 2017 (arXiv:1708.03888), AlexNet-BN without LARS: global batch -> top-1 %.
PAPER = {512: 60.2, 4096: 58.9, 8192: 58.0}


def get_config(batch_size: str = "8192") -> ml_collections.ConfigDict:
  """AlexNet-BN + momentum SGD at global batch ``batch_size``."""
  config = _imagenet.imagenet_config(model="alexnet_bn", batch_size=int(batch_size), optimizer="sgd")
  config.update(learning_rate=0.01, lr_scaling="linear", warmup_epochs=5.0)  # 0.01 per 256 images.
  config.expected_top1 = PAPER.get(config.batch_size)
  return config
