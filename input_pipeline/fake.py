"""Synthetic data of any shape, generated in NumPy, to measure training throughput.

A fake data set has the sizes of a real one (by default ImageNet's: 1,281,167 training and 50,000
evaluation examples of 224x224x3, 1,000 classes), but only `pool_size` distinct examples: example `i`
is pool example `i mod pool_size`. Batches therefore cost a gather and a copy, like real in-memory
data, and nothing is decoded. Labels carry no signal; use it for speed, never for accuracy.
"""

import dataclasses

import numpy as np

from input_pipeline import arrays, validation


class TiledArray:
  """A read-only array of `length` rows in which row `i` is row `i mod len(pool)` of `pool`."""

  def __init__(self, pool: np.ndarray, length: int):
    self._pool = pool
    self.shape = (length, *pool.shape[1:])
    self.dtype = pool.dtype

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, indices: np.ndarray) -> np.ndarray:
    return self._pool[np.asarray(indices) % len(self._pool)]


@dataclasses.dataclass(frozen=True)
class FakeDataset:
  """Loader of a fake data set (register other shapes with `input_pipeline.register_dataset`).

  Attributes:
    image_shape: shape of one example, e.g. `(224, 224, 3)`; `image_size` overrides `H = W`.
    num_classes: labels are drawn uniformly from `[0, num_classes)`.
    num_train: nominal training-set size (fixes the number of steps per epoch).
    num_eval: nominal evaluation-set size.
    pool_size: number of distinct examples actually stored.
    seed: seed of the pool's contents.
  """

  image_shape: tuple[int, ...] = (224, 224, 3)
  num_classes: int = 1000
  num_train: int = 1_281_167
  num_eval: int = 50_000
  pool_size: int = 64
  seed: int = 0

  def __call__(self, *, image_size: int | None = None, data_dir: str | None = None) -> arrays.ArraySplits:
    """Returns the fake data set; `image_size` (if given) replaces the two spatial sides."""
    del data_dir
    shape = self.image_shape
    if image_size is not None:
      if len(shape) != 3:
        raise ValueError(f"`image_size` must be None for a fake data set of shape {shape} (not images).")
      validation.check_int(image_size, "image_size", minimum=1)
      shape = (image_size, image_size, shape[-1])
    rng = np.random.default_rng(self.seed)
    images = rng.standard_normal((self.pool_size, *shape), dtype=np.float32)
    labels = rng.integers(0, self.num_classes, self.pool_size).astype(np.int32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return arrays.ArraySplits(
      TiledArray(images, self.num_train),
      TiledArray(labels, self.num_train),
      TiledArray(images, self.num_eval),
      TiledArray(labels, self.num_eval),
      self.num_classes,
    )
