"""What a training program needs to know about a data set before it reads a batch."""

from typing import NamedTuple


class DatasetInfo(NamedTuple):
  """Sizes and shapes of a data set as the pipelines serve it.

  Attributes:
    name: the name passed to `get_dataset_info` ("digits", "mnist1d", "fake" or a TFDS name).
    num_classes: number of labels; labels are int32 in `[0, num_classes)`.
    image_shape: shape of one served example after preprocessing, `(H, W, C)` for images or
      `(L, C)` for MNIST-1D signals.
    num_train: number of examples in the training split (all processes together).
    num_eval: number of examples in the evaluation split (all processes together).
  """

  name: str
  num_classes: int
  image_shape: tuple[int, ...]
  num_train: int
  num_eval: int
