"""AlexNet without LARS: momentum SGD, linear LR scaling and warm-up (the paper's baseline).

Command:
  python train.py --config=configs/alexnet_sgd.py:8192 --config.grad_accum_steps=4 \
      --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/alexnet_sgd_8k
Hardware:  as configs/alexnet_lars.py.
Time:      as configs/alexnet_lars.py (the optimizer costs the same).
Expected:  ImageNet top-1 after 100 epochs (paper): 512: 58.8 | 4K: 53.1 | 8K: 44.8, the collapse LARS
           fixes (58.2 at 8K with configs/alexnet_lars.py).
LR: 0.01 per 256 images (Caffe's AlexNet), scaled linearly: 0.02 at 512, 0.32 at 8K; 2 warm-up epochs.
"""

import ml_collections

from configs import _imagenet
from input_pipeline import defaults


def get_config(batch_size: str = "8192") -> ml_collections.ConfigDict:
  """AlexNet + momentum SGD at global batch ``batch_size``."""
  config = _imagenet.imagenet_config(model="alexnet", batch_size=int(batch_size), optimizer="sgd")
  config.recipe = "alexnet_sgd"
  config.image_size = defaults.ALEXNET_IMAGE_SIZE  # Caffe's AlexNet crop.
  config.crop_padding = defaults.ALEXNET_CROP_PADDING  # Evaluation: centre 227 of 256.
  config.learning_rate = 0.01  # At base_batch_size, scaled linearly to batch_size.
  config.lr_scaling = "linear"
  config.base_batch_size = 256
  config.warmup_epochs = 2.0
  return config
