"""scikit-learn's handwritten digits (UCI, Alpaydin & Kaynak 1998): 1,797 grey 8x8 images, 10 classes.
Split (fixed, stratified): with `r = RandomState(0).permutation(1797)` (a stream NumPy keeps frozen), the
test split takes, for every class `c`, the first `round(0.2 n_c)` indices of class `c` in the order `r`:
1,438 training and 359 test images (359 is prime: evaluation padding is always exercised). Pixels `v`
become `(v / 16 - μ) / σ` (training-pixel mean and deviation); `image_size = 8 k` repeats each `k x k`.
"""

import functools

import numpy as np

from input_pipeline import arrays
from input_pipeline.validation import InputError

NUM_CLASSES, NATIVE_SIZE = 10, 8


def split_indices(labels: np.ndarray, seed: int = 0, fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
  """Sorted `(train_indices, test_indices)` of the stratified split above."""
  order = np.random.RandomState(seed).permutation(len(labels))
  members = (order[labels[order] == label] for label in np.unique(labels))
  test = np.sort(np.concatenate([part[: int(np.rint(fraction * len(part)))] for part in members]))
  return np.setdiff1d(np.arange(len(labels)), test), test


@functools.lru_cache(maxsize=4)
def load(*, image_size: int | None = None, data_dir: str | None = None) -> arrays.ArraySplits:
  """The digits as `(N, S, S, 1)` float32 images, `S = image_size` (None: 8, else a multiple of 8)."""
  del data_dir  # the data ship with scikit-learn.
  if image_size is not None and image_size % NATIVE_SIZE:
    raise InputError("image_size", f"`image_size` must be a multiple of 8 for 'digits', got {image_size}.")
  from sklearn.datasets import load_digits  # scikit-learn takes a second to import: only when used.

  digits = load_digits()
  images, labels = digits.images / 16.0, digits.target.astype(np.int32)
  train, test = split_indices(labels)
  images = ((images - images[train].mean()) / images[train].std()).astype(np.float32)
  factor = (image_size or NATIVE_SIZE) // NATIVE_SIZE
  images = np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)[..., None]
  splits = arrays.ArraySplits(images[train], labels[train], images[test], labels[test], NUM_CLASSES)
  return arrays.read_only(splits)
