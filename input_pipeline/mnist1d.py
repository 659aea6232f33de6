"""MNIST-1D, generated offline: ten classes of 1-D signals of length 40.

The data come from `mnist1d.data.make_dataset` (never `get_dataset`, which downloads), with the
package's default arguments except the number of samples: 50,000 by default, split 80/20 in the
package's order into 40,000 training and 10,000 test signals, standardised over the whole set by the
package. Examples are served as `(40, 1)` float32 (length, channels). Generating 50,000 signals takes
about 10 s on one CPU core; the result is kept in memory, and on disk under `data_dir` when given.

References:
  S. Greydanus, D. Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024.
  https://arxiv.org/abs/2011.14439
"""

import functools
import os
import random

import numpy as np

from input_pipeline import arrays, validation

NUM_CLASSES = 10
LENGTH = 40
NUM_SAMPLES = 50_000
SEED = 42


@functools.lru_cache(maxsize=4)
def load(
  *,
  image_size: int | None = None,
  data_dir: str | None = None,
  num_samples: int = NUM_SAMPLES,
  seed: int = SEED,
) -> arrays.ArraySplits:
  """Generates (or reads back from `data_dir`) MNIST-1D as `(N, 40, 1)` float32 signals.

  Args:
    image_size: `None` or 40 (signals cannot be resized).
    data_dir: if given, the arrays are cached in `<data_dir>/mnist1d/` and read back next time.
    num_samples: total number of signals (train + test), a multiple of 10.
    seed: the generator's seed (the package's default is 42).

  Returns:
    `ArraySplits`, shared between callers and read-only.

  Raises:
    ValueError: if `image_size` is not None or 40, or `num_samples` is not a positive multiple of 10.
  """
  if image_size not in (None, LENGTH):
    raise ValueError(f"`image_size` must be None or {LENGTH} for 'mnist1d', got {image_size!r}.")
  validation.check_int(num_samples, "num_samples", minimum=NUM_CLASSES)
  if num_samples % NUM_CLASSES:
    raise ValueError(f"`num_samples` must be a multiple of {NUM_CLASSES}, got {num_samples}.")
  path = None
  if data_dir is not None:
    path = os.path.join(data_dir, "mnist1d", f"mnist1d-n{num_samples}-seed{seed}.npz")
  if path is not None and os.path.exists(path):
    with np.load(path) as stored:
      data = {key: stored[key] for key in stored.files}
  else:
    data = _generate(num_samples, seed)
    if path is not None:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      np.savez(path, **data)
  splits = arrays.ArraySplits(
    data["x"][..., None], data["y"], data["x_test"][..., None], data["y_test"], NUM_CLASSES
  )
  for array in splits[:4]:
    array.flags.writeable = False
  return splits


def _generate(num_samples: int, seed: int) -> dict[str, np.ndarray]:
  from mnist1d.data import get_dataset_args, make_dataset  # imported only when generating.

  args = get_dataset_args()
  args.num_samples, args.seed = num_samples, seed
  # make_dataset reseeds the global `random` and `np.random` generators: put them back afterwards.
  python_state = random.getstate()
  numpy_state = np.random.get_state()  # noqa: NPY002
  try:
    data = make_dataset(args)
  finally:
    random.setstate(python_state)
    np.random.set_state(numpy_state)  # noqa: NPY002
  return {
    "x": data["x"].astype(np.float32),
    "y": data["y"].astype(np.int32),
    "x_test": data["x_test"].astype(np.float32),
    "y_test": data["y_test"].astype(np.int32),
  }
