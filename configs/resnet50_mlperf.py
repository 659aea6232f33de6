"""ResNet-50 with LARS, MLPerf Training recipe: to 75.9% top-1 in 35-92 epochs.

γ_0, warm-up, momentum, weight decay and epochs come from lars_optax.mlperf_resnet50_hparams for the
batch size (e.g. 32K: γ_0 = 29, 18 warm-up epochs, m = 0.929, β = 1e-4, 64 epochs); poly(2) decay to
1e-4, label smoothing 0.1, biases and batch norm excluded from LARS.

Command (B = 32768 on 8 H100s, 16 micro-batches of 256 per GPU):
  python train.py --config=configs/resnet50_mlperf.py:32768 --config.grad_accum_steps=16 \
      --config.data_dir=$TFDS_DATA_DIR --workdir=$HOME/runs/resnet50_mlperf_32k
TPU v3-1024 or larger: the same command on every host, e.g. :65536 without grad_accum_steps.
Hardware:  8 GPUs or a TPU pod slice; ImageNet prepared with TFDS in data_dir.
Time:      64 epochs at 32K: about 20 h on 8 V100s; MLPerf's JAX entry trained at 64K in 0.47 minutes on
           4,096 TPU-v3 chips (not measured here).
Expected:  75.9% top-1 (the MLPerf target), at every batch size of the table.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import _imagenet


def get_config(batch_size: str = "32768") -> ml_collections.ConfigDict:
  """MLPerf's ResNet-50 LARS recipe at global batch ``batch_size``."""
  config = _imagenet.imagenet_config(model="resnet50", batch_size=int(batch_size), optimizer="lars")
  config.recipe = "mlperf_resnet50"
  config.eval_every_steps = -1
  # Filled by the recipe for the batch size (training/recipes.py) unless given on the command line.
  for field in (
    "learning_rate",
    "warmup_epochs",
    "momentum",
    "weight_decay",
    "num_epochs",
    "end_learning_rate",
    "lr_decay_power",
    "label_smoothing",
  ):
    config[field] = placeholder(float)
  return config
