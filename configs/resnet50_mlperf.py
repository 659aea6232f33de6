"""ResNet-50 with LARS, MLPerf Training recipe: to 75.9% top-1.

γ_0, warm-up, momentum, weight decay, epochs, end LR and label smoothing for the batch size come from
`lars_optax.mlperf_resnet50_hparams` (its table); biases and batch norm are excluded from LARS.

Command (B = 32768 on 8 H100s, 16 micro-batches of 256 per GPU):
  python train.py --config=configs/resnet50_mlperf.py:32768 --config.grad_accum_steps=16 \
    --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/resnet50_mlperf_32k
TPU v3-1024 or larger: the same command on every host, e.g. :65536 without grad_accum_steps.
Hardware:  8 GPUs or a TPU pod slice; ImageNet prepared with TFDS in data_dir.
Expected:  75.9% top-1 (the MLPerf target), at every batch size of the table.
"""

import ml_collections

import lars_optax
from configs import _imagenet


def get_config(batch_size: str = "32768") -> ml_collections.ConfigDict:
  """MLPerf's ResNet-50 LARS recipe at global batch ``batch_size``."""
  config = _imagenet.imagenet_config(model="resnet50", batch_size=int(batch_size), optimizer="lars")
  hp = lars_optax.mlperf_resnet50_hparams(config.batch_size)
  config.update(learning_rate=hp.learning_rate, momentum=hp.momentum, weight_decay=hp.weight_decay)
  config.update(warmup_epochs=float(hp.warmup_epochs), num_epochs=float(hp.num_epochs), expected_top1=75.9)
  config.update(
    end_learning_rate=hp.end_learning_rate, lr_decay_power=hp.power, label_smoothing=hp.label_smoothing
  )
  return config
