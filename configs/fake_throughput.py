"""Training throughput of ResNet-50 + LARS on synthetic ImageNet-shaped data (labels are noise).

Command:   python train.py --config=configs/fake_throughput.py:256 --workdir=/tmp/throughput
           (8 GPUs: :2048; CPU smoke test: :8 --config.half_precision=False --config.num_train_steps=5
           --config.image_size=64)
Hardware:  any; read train/images_per_sec in metrics.jsonl (the first window includes compilation).
Expected:  no accuracy; for reference, Flax's ImageNet example reports about 1,030 images/s per V100 in fp16.
"""

import ml_collections

from configs import default


def get_config(batch_size: str = "256") -> ml_collections.ConfigDict:
  """ResNet-50 + LARS on fake data at global batch ``batch_size``: 100 steps, no evaluation."""
  config = default.get_config()
  config.update(dataset="fake", model="resnet50", batch_size=int(batch_size), half_precision=True)
  config.update(warmup_epochs=1.0, num_train_steps=100, log_every_steps=20, expected_top1=None)
  config.update(steps_per_eval=0, diagnostics_every_steps=0, checkpoint_every_steps=0)
  return config
