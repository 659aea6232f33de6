"""ResNet-50 with LARS, MLPerf Training recipe: to 75.9% top-1.

γ_0, warm-up, momentum, weight decay, epochs, end LR and label smoothing for the batch size come from
`lars_optax.mlperf_resnet50_hparams` (its table); biases and batch norm are excluded from LARS.
Command:   python train.py --config=configs/resnet50_mlperf.py:32768 --config.grad_accum_steps=16 \
             --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/resnet50_mlperf_32k
Hardware:  8 GPUs (16 micro-batches of 256 each), or a TPU v3-1024 or larger running the same command
           on every host (e.g. :65536 without grad_accum_steps); ImageNet prepared with TFDS in data_dir.
Expected:  75.9% top-1 (the MLPerf target), at every batch size of the table.
"""

import ml_collections

import lars_optax
from configs import _imagenet


def get_config(batch_size: str = "32768") -> ml_collections.ConfigDict:
  """MLPerf's ResNet-50 LARS recipe at global batch ``batch_size``."""
  config = _imagenet.imagenet_config(model="resnet50", batch_size=int(batch_size), optimizer="lars")
  hparams = lars_optax.mlperf_resnet50_hparams(config.batch_size)._asdict()  # Named as the config's fields,
  hparams["lr_decay_power"] = hparams.pop("power")  # but for the decay's power.
  config.update(hparams, expected_top1=75.9)
  return config
