"""ResNet-50 without LARS: Nesterov momentum SGD, linear LR scaling (0.1 per 256), 5 warm-up epochs.

Command:
  python train.py --config=configs/resnet50_sgd.py:32768 --config.grad_accum_steps=16 \
      --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/resnet50_sgd_32k
Hardware:  as configs/resnet50_lars.py.
Time:      90 epochs: about 27 h on 8 V100s (not measured here).
Expected:  the paper has no ResNet-50 SGD baseline; a JAX ResNet-50 with this recipe (Nesterov,
           linear scaling, 90 epochs) reaches 76.2 at 4K and 71.7 at 32K (Nado et al. 2021, arXiv:2102.06356).
"""

import ml_collections

from configs import _imagenet


def get_config(batch_size: str = "8192") -> ml_collections.ConfigDict:
  """ResNet-50 + Nesterov momentum SGD at global batch ``batch_size``."""
  config = _imagenet.imagenet_config(model="resnet50", batch_size=int(batch_size), optimizer="sgd")
  config.recipe = "resnet50_sgd"
  config.num_epochs = 90.0
  config.learning_rate = 0.1  # Goyal et al.: 0.1 per 256 images.
  config.lr_scaling = "linear"
  config.base_batch_size = 256
  config.warmup_epochs = 5.0
  config.nesterov = True
  config.weight_decay = 1e-4
  config.label_smoothing = 0.1
  return config
