"""Input pipelines for lars_optax's training program: batches shaped for `jax.pmap`.

- `get_dataset_info(name)`: classes, sizes and the served example shape.
- `train_iterator(name, global_batch_size=..., seed=...)`: endless, resumable training batches
  `{"image": (D, b, ...), "label": (D, b)}` for this process's devices.
- `eval_iterator(name, global_batch_size=...)`: the evaluation split once, padded, with a `mask`.
- `prefetch_to_device(iterator)`, `prefetch_batches(iterator, place)`: overlap host-to-device copies
  with the step.
- `load_arrays(name)`: small data sets as NumPy arrays.

Data sets: "digits" (scikit-learn's 8x8 digits; the offline default), "mnist1d" (generated offline),
"fake" (synthetic, for throughput), and any TFDS image-classification data set by name
("imagenet2012", "cifar10", "imagenette", ...), read from a TFDS data directory.
"""

from input_pipeline.arrays import DTYPES, ArraySplits
from input_pipeline.dataset_info import DatasetInfo
from input_pipeline.fake import FakeDataset
from input_pipeline.pipeline import (
  eval_iterator,
  get_dataset_info,
  load_arrays,
  train_iterator,
)
from input_pipeline.prefetch import prefetch_batches, prefetch_to_device
from input_pipeline.registry import ARRAY_DATASETS, register_dataset
from input_pipeline.sharding import ProcessLayout, num_eval_batches, process_layout

__all__ = [
  "ARRAY_DATASETS",
  "DTYPES",
  "ArraySplits",
  "DatasetInfo",
  "FakeDataset",
  "ProcessLayout",
  "eval_iterator",
  "get_dataset_info",
  "load_arrays",
  "num_eval_batches",
  "prefetch_batches",
  "prefetch_to_device",
  "process_layout",
  "register_dataset",
  "train_iterator",
]
