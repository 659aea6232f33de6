"""AlexNet without LARS: momentum SGD, linear LR scaling and warm-up (the paper's baseline).

Command:   python train.py --config=configs/alexnet_sgd.py:8192 --config.grad_accum_steps=4 \
             --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/alexnet_sgd_8k
Hardware:  as configs/alexnet_lars.py.
Expected:  ImageNet top-1 after 100 epochs: the paper's figure for the batch size (`PAPER` below), the
           collapse configs/alexnet_lars.py fixes. LR: 0.01 per 256 images, scaled linearly.
"""

import ml_collections

from configs import _imagenet

# You, Gitman & Ginsburg 2017 (arXiv:1708.03888), AlexNet without LARS: global batch -> top-1 %.
PAPER = {512: 58.8, 4096: 53.1, 8192: 44.8}


def get_config(batch_size: str = "8192") -> ml_collections.ConfigDict:
  """AlexNet + momentum SGD at global batch ``batch_size``."""
  config = _imagenet.imagenet_config(model="alexnet", batch_size=int(batch_size), optimizer="sgd")
  config.update(learning_rate=0.01, lr_scaling="linear", warmup_epochs=2.0)  # 0.01 per 256 images.
  config.expected_top1 = PAPER.get(config.batch_size)
  return config
