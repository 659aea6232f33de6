"""Synthetic data with ImageNet's sizes, to measure throughput: labels carry no signal.

Only `POOL_SIZE` distinct examples are stored: example `i` is pool example `i mod POOL_SIZE`, so a batch
costs a gather and a copy, like real in-memory data, and nothing is decoded.
"""

import numpy as np

from input_pipeline import arrays

IMAGE_SHAPE, NUM_CLASSES, NUM_TRAIN, NUM_EVAL, POOL_SIZE = (224, 224, 3), 1000, 1_281_167, 50_000, 64


class TiledArray:
  """A read-only array of `length` rows in which row `i` is row `i mod len(pool)` of `pool`."""

  def __init__(self, pool: np.ndarray, length: int):
    self._pool, self.shape, self.dtype = pool, (length, *pool.shape[1:]), pool.dtype

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, indices: np.ndarray) -> np.ndarray:
    return self._pool[np.asarray(indices) % len(self._pool)]


def load(*, image_size: int | None = None, data_dir: str | None = None, seed: int = 0) -> arrays.ArraySplits:
  """The fake data set; `image_size` (if given) replaces the two spatial sides."""
  del data_dir
  side = IMAGE_SHAPE[0] if image_size is None else image_size
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((POOL_SIZE, side, side, IMAGE_SHAPE[-1]), dtype=np.float32)
  labels = rng.integers(0, NUM_CLASSES, POOL_SIZE).astype(np.int32)
  images.flags.writeable = labels.flags.writeable = False
  tiled = [TiledArray(array, length) for length in (NUM_TRAIN, NUM_EVAL) for array in (images, labels)]
  return arrays.ArraySplits(*tiled, NUM_CLASSES)
