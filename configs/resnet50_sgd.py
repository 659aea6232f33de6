"""ResNet-50 without LARS: Nesterov momentum SGD, linear LR scaling (0.1 per 256), 5 warm-up epochs.

Command:   python train.py --config=configs/resnet50_sgd.py:32768 --config.grad_accum_steps=16 \
             --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/resnet50_sgd_32k
Hardware:  as configs/resnet50_lars.py.
Expected:  top-1 after 90 epochs as published for this recipe (`PUBLISHED` below; the paper has none).
"""

import ml_collections

from configs import _imagenet

# Nado et al. 2021 (arXiv:2102.06356), a JAX ResNet-50 with Nesterov momentum and linear scaling,
# 90 epochs: global batch -> ImageNet top-1 %.
PUBLISHED = {4096: 76.2, 32768: 71.7}


def get_config(batch_size: str = "8192") -> ml_collections.ConfigDict:
  """ResNet-50 + Nesterov momentum SGD at global batch ``batch_size``."""
  config = _imagenet.imagenet_config(model="resnet50", batch_size=int(batch_size), optimizer="sgd")
  config.update(num_epochs=90.0, learning_rate=0.1, lr_scaling="linear", warmup_epochs=5.0, nesterov=True)
  config.update(weight_decay=1e-4, label_smoothing=0.1, expected_top1=PUBLISHED.get(config.batch_size))
  return config
