"""The handwritten digits bundled with scikit-learn: real data that needs no download.

`sklearn.datasets.load_digits` holds 1,797 grey images of 8x8 pixels with values 0..16, ten classes
(UCI "Optical Recognition of Handwritten Digits", test part). This is the default data set of
`train.py`: it trains on any machine, offline, in pure NumPy (no TensorFlow import).

Split (fixed, stratified). With `r = numpy.random.RandomState(0).permutation(1797)` (the legacy
generator, whose stream NumPy keeps frozen), the test split takes, for every class `c`, the first
`round(0.2 n_c)` indices of class `c` in the order `r`; the training split is the rest. That gives
1,438 training and 359 test images (35 or 36 per class in the test split; 359 is prime, so no batch
size above one divides it and evaluation padding is always exercised).

Normalisation. `x = (v / 16 - μ) / σ`, with `μ` and `σ` the mean and standard deviation of `v / 16` over
all pixels of the training split. Optional integer upscaling repeats every pixel `k x k` times
(nearest neighbour), so `image_size = 8 k`; e.g. 32 for CIFAR-style models.

References:
  E. Alpaydin, C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning
  Repository, 1998. https://doi.org/10.24432/C50P49
"""

import functools

import numpy as np

from input_pipeline import arrays, validation

NUM_CLASSES = 10
NATIVE_SIZE = 8
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def split_indices(
  labels: np.ndarray, *, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
  """Returns sorted `(train_indices, test_indices)` of the stratified split described above."""
  order = np.random.RandomState(seed).permutation(len(labels))
  test = [
    members[: int(np.rint(test_fraction * len(members)))]
    for members in (order[labels[order] == label] for label in np.unique(labels))
  ]
  test = np.sort(np.concatenate(test))
  return np.setdiff1d(np.arange(len(labels)), test), test


@functools.lru_cache(maxsize=4)
def load(*, image_size: int | None = None, data_dir: str | None = None) -> arrays.ArraySplits:
  """Loads the digits, split and normalised, as NHWC float32 arrays with one channel.

  Args:
    image_size: side of the served images: `None` or 8 for the original 8x8, else a multiple of 8.
    data_dir: unused (the data ship with scikit-learn); accepted so that every data set loads alike.

  Returns:
    `ArraySplits` with images `(N, image_size, image_size, 1)` float32 and labels int32; the arrays
    are shared between callers and read-only.

  Raises:
    ValueError: if `image_size` is not a positive multiple of 8.
  """
  del data_dir
  size = NATIVE_SIZE if image_size is None else image_size
  validation.check_int(size, "image_size", minimum=1)
  if size % NATIVE_SIZE:
    raise ValueError(
      f"`image_size` must be None or a positive multiple of {NATIVE_SIZE} for 'digits', got {image_size!r}."
    )
  from sklearn.datasets import load_digits  # scikit-learn takes a second to import: only when used.

  digits = load_digits()
  images = digits.images / 16.0
  labels = digits.target.astype(np.int32)
  train, test = split_indices(labels)
  mean, std = images[train].mean(), images[train].std()
  factor = size // NATIVE_SIZE
  images = ((images - mean) / std).astype(np.float32)
  images = np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)[..., None]
  splits = arrays.ArraySplits(images[train], labels[train], images[test], labels[test], NUM_CLASSES)
  for array in splits[:4]:
    array.flags.writeable = False
  return splits
