"""Input pipelines of lars_optax's training program: batches shaped `(local devices, per-device batch, ...)`.

In memory, no download: "digits" (the default), "mnist1d", "fake"; any other name is a TFDS image
classification data set prepared in a data directory (`pip install -e ".[tfds]"`).
"""

from input_pipeline.pipeline import (
  ARRAY_DATASETS,
  DatasetInfo,
  eval_dataset,
  get_dataset_info,
  load_arrays,
  train_iterator,
)
from input_pipeline.prefetch import prefetch_batches
from input_pipeline.sharding import num_eval_batches
from input_pipeline.validation import InputError

__all__ = [
  "ARRAY_DATASETS",
  "DatasetInfo",
  "InputError",
  "eval_dataset",
  "get_dataset_info",
  "load_arrays",
  "num_eval_batches",
  "prefetch_batches",
  "train_iterator",
]
