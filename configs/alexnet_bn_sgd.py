"""AlexNet-BN without LARS: momentum SGD, linear LR scaling and warm-up (the paper's baseline).

Command:
  python train.py --config=configs/alexnet_bn_sgd.py:8192 --config.grad_accum_steps=4 \
      --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/alexnet_bn_sgd_8k
Hardware:  as configs/alexnet_bn_lars.py.
Time:      as configs/alexnet_bn_lars.py.
Expected:  ImageNet top-1 after 100 epochs (paper): 512: 60.2 | 4K: 58.9 | 8K: 58.0 (LARS: 60.1 at 8K).
LR: 0.01 per 256 images, scaled linearly (0.32 at 8K); 5 warm-up epochs.
"""

import ml_collections

from configs import _imagenet
from input_pipeline import defaults


def get_config(batch_size: str = "8192") -> ml_collections.ConfigDict:
  """AlexNet-BN + momentum SGD at global batch ``batch_size``."""
  config = _imagenet.imagenet_config(model="alexnet_bn", batch_size=int(batch_size), optimizer="sgd")
  config.recipe = "alexnet_bn_sgd"
  config.image_size = defaults.ALEXNET_IMAGE_SIZE  # Caffe's AlexNet crop.
  config.crop_padding = defaults.ALEXNET_CROP_PADDING  # Evaluation: centre 227 of 256.
  config.learning_rate = 0.01
  config.lr_scaling = "linear"
  config.base_batch_size = 256
  config.warmup_epochs = 5.0
  return config
