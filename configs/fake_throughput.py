"""Training throughput of ResNet-50 on synthetic ImageNet-shaped data (no accuracy: labels are noise).

Command (one H100, bf16, batch 256 per device):
  python train.py --config=configs/fake_throughput.py:256 --workdir=/tmp/throughput
8 GPUs: --config=configs/fake_throughput.py:2048. CPU smoke test:
  python train.py --config=configs/fake_throughput.py:8 --config.half_precision=False \
      --config.num_train_steps=5 --config.image_size=64 --workdir=/tmp/throughput_cpu
Hardware:  any; the figure to read is train/images_per_sec in metrics.jsonl (the first window
           includes compilation).
Time:      100 steps: about a minute on one H100.
Expected:  no accuracy (random labels); for reference, Flax's ImageNet example reports about 1,030
           images/s per V100 in fp16.
"""

import ml_collections

from configs import default


def get_config(batch_size: str = "256") -> ml_collections.ConfigDict:
  """ResNet-50 + LARS on fake data at global batch ``batch_size``."""
  config = default.get_config()
  config.dataset = "fake"
  config.model = "resnet50"
  config.batch_size = int(batch_size)
  config.half_precision = True
  config.learning_rate = 10.0
  config.warmup_epochs = 1.0
  config.num_epochs = 10.0
  config.num_train_steps = 100
  config.log_every_steps = 20
  config.steps_per_eval = 0  # No evaluation: the labels are noise.
  config.diagnostics_every_steps = 0
  config.checkpoint_every_steps = 0
  return config
