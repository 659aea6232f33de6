"""MNIST-1D (Greydanus & Kobak, ICML 2024), generated offline: 10 classes of `(40, 1)` float32 signals.
From `mnist1d.data.make_dataset` (never `get_dataset`, which downloads) with the package's defaults but the
number of samples (50,000: 40,000 training, 10,000 test, in the package's order and standardisation).
Generating takes about 10 s; the arrays are kept in memory, and under `<data_dir>/mnist1d/` when given.
"""

import functools
import os
import random

import numpy as np

from input_pipeline import arrays
from input_pipeline.validation import InputError, check_int

NUM_CLASSES, LENGTH, NUM_SAMPLES, SEED = 10, 40, 50_000, 42


@functools.lru_cache(maxsize=4)
def load(
  *,
  image_size: int | None = None,
  data_dir: str | None = None,
  num_samples: int = NUM_SAMPLES,
  seed: int = SEED,
) -> arrays.ArraySplits:
  """MNIST-1D as `(N, 40, 1)` float32 signals; `num_samples` (train + test) a multiple of 10."""
  if image_size not in (None, LENGTH):
    raise InputError("image_size", f"`image_size` must be None or 40 for 'mnist1d', got {image_size!r}.")
  check_int(num_samples, "num_samples", minimum=NUM_CLASSES)
  if num_samples % NUM_CLASSES:
    raise InputError("num_samples", f"`num_samples` must be a multiple of {NUM_CLASSES}, got {num_samples}.")
  path = data_dir and os.path.join(data_dir, "mnist1d", f"mnist1d-n{num_samples}-seed{seed}.npz")
  if path and os.path.exists(path):
    with np.load(path) as stored:
      data = dict(stored)
  else:
    data = _generate(num_samples, seed)
    if path:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      np.savez(path, **data)
  x, y, x_test, y_test = (data[key] for key in ("x", "y", "x_test", "y_test"))
  return arrays.read_only(arrays.ArraySplits(x[..., None], y, x_test[..., None], y_test, NUM_CLASSES))


def _generate(num_samples: int, seed: int) -> dict[str, np.ndarray]:
  from mnist1d.data import get_dataset_args, make_dataset  # imported only when generating.

  args = get_dataset_args()
  args.num_samples, args.seed = num_samples, seed
  # make_dataset reseeds the global `random` and `np.random` generators: put them back afterwards.
  python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
  try:
    data = make_dataset(args)
  finally:
    random.setstate(python_state)
    np.random.set_state(numpy_state)  # noqa: NPY002
  types = {"x": np.float32, "y": np.int32, "x_test": np.float32, "y_test": np.int32}
  return {key: data[key].astype(dtype) for key, dtype in types.items()}
