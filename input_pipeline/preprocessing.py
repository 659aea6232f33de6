"""Image preprocessing in TensorFlow: Inception crops with a fused JPEG decode, CIFAR crops, flips.

Every random operation is stateless: it takes an explicit seed `tf.Tensor` of shape `[2]`, so the
augmented image is a pure function of (example, seed) and a restarted pipeline reproduces it.

Training (ImageNet, "inception"). A window of area `a · h w` with `a ~ U[0.08, 1]` and aspect ratio
`w'/h' ∈ [3/4, 4/3]` is sampled by `tf.image.stateless_sample_distorted_bounding_box` (10 attempts;
if all fail, the centre crop below is used, as in the reference implementations); only that window is
decoded (`tf.image.decode_and_crop_jpeg`, which skips the IDCT of blocks outside it), resized to
`S x S` with bicubic interpolation, clipped to [0, 255] and flipped left-right with probability 1/2.
The reference TF/Flax code also asks the window to cover 10% of the image (`min_object_covered=0.1`),
which silently raises the lowest area to 10%; we keep the paper's 8%.

Evaluation (ImageNet). The centre square of side `⌊S / (S + p) · min(h, w)⌋` (`p` = crop padding, 32:
224 out of 256 as in Flax's example; AlexNet's 227 out of 256 is `S = 227, p = 29`) is decoded and
resized to `S x S`.

Normalisation: `(x - μ_c) / σ_c` per channel, with ImageNet's statistics (on the 0..255 scale) for
RGB images and `μ = σ = 127.5` (that is, [-1, 1]) otherwise.

References:
  C. Szegedy et al., "Going Deeper with Convolutions", CVPR 2015 (the crop).
  https://arxiv.org/abs/1409.4842
  Flax ImageNet example, `input_pipeline.py`. https://github.com/google/flax/tree/main/examples/imagenet
"""

from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

from input_pipeline import defaults

AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
MAX_ATTEMPTS = 10
CROP_PADDING = defaults.CROP_PADDING
IMAGE_SIZE = defaults.IMAGE_SIZE
CIFAR_PADDING = 4
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def normalization(num_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel `(mean, stddev)` on the 0..255 scale."""
  if num_channels == 3:
    return MEAN_RGB, STDDEV_RGB
  return (127.5,) * num_channels, (127.5,) * num_channels


def normalize(image: tf.Tensor, num_channels: int, dtype: tf.DType) -> tf.Tensor:
  """`(image - μ) / σ` per channel, returned in `dtype`."""
  mean, stddev = normalization(num_channels)
  image = (tf.cast(image, tf.float32) - tf.constant(mean)) / tf.constant(stddev)
  return tf.cast(image, dtype)


def center_crop_window(image_shape: tf.Tensor, image_size: int, crop_padding: int) -> tf.Tensor:
  """`[y, x, side, side]` of the centred square with `side = ⌊S / (S + p) · min(h, w)⌋`."""
  height, width = image_shape[0], image_shape[1]
  side = tf.cast(
    image_size / (image_size + crop_padding) * tf.cast(tf.minimum(height, width), tf.float64),
    tf.int32,
  )
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def random_crop_window(
  image_shape: tf.Tensor, seed: tf.Tensor, image_size: int, crop_padding: int = CROP_PADDING
) -> tf.Tensor:
  """`[y, x, height, width]` of an Inception crop (falls back to the centre crop; see module doc)."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    image_shape,
    bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
    seed=seed,
    min_object_covered=0.0,
    aspect_ratio_range=ASPECT_RATIO_RANGE,
    area_range=AREA_RANGE,
    max_attempts=MAX_ATTEMPTS,
    use_image_if_no_bounding_boxes=True,
  )
  window = tf.stack([begin[0], begin[1], size[0], size[1]])
  whole_image = tf.reduce_all(tf.equal(size[:2], tf.cast(image_shape[:2], tf.int32)))
  return tf.where(whole_image, center_crop_window(image_shape, image_size, crop_padding), window)


def decode_and_crop(
  image_bytes: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor], channels: int, fused: bool
) -> tf.Tensor:
  """Decodes the window `window_fn(shape)` of an encoded image, uint8 `(h', w', channels)`.

  `fused=True` reads the shape from the JPEG header and decodes only the window; `fused=False`
  decodes the whole image (JPEG, PNG, ...) and slices it. Both give the same pixels for JPEGs.
  """
  if fused:
    window = window_fn(tf.image.extract_jpeg_shape(image_bytes))
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=channels)
  image = tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
  window = window_fn(tf.shape(image))
  return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """Bicubic resize to `S x S`, float32 clipped to [0, 255] (bicubic overshoots at edges)."""
  image = tf.image.resize(image, [image_size, image_size], method="bicubic")
  return tf.clip_by_value(image, 0.0, 255.0)


def inception_train(
  image_bytes: tf.Tensor, seed: tf.Tensor, image_size: int, channels: int, fused: bool
) -> tf.Tensor:
  """Random-resized crop and random flip of an encoded image; float32 `(S, S, channels)`."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = decode_and_crop(
    image_bytes,
    lambda shape: random_crop_window(shape, crop_seed, image_size),
    channels,
    fused,
  )
  return tf.image.stateless_random_flip_left_right(resize(image, image_size), flip_seed)


def inception_eval(
  image_bytes: tf.Tensor, image_size: int, crop_padding: int, channels: int, fused: bool
) -> tf.Tensor:
  """Centre crop of an encoded image resized to `S x S`; float32 `(S, S, channels)`."""
  image = decode_and_crop(
    image_bytes,
    lambda shape: center_crop_window(shape, image_size, crop_padding),
    channels,
    fused,
  )
  return resize(image, image_size)


def resize_if_needed(image: tf.Tensor, image_size: int | None) -> tf.Tensor:
  """A decoded image as float32, bilinearly resized to `S x S` when `image_size` is given."""
  image = tf.cast(image, tf.float32)
  if image_size is None or image.shape[:2] == (image_size, image_size):
    return image
  return tf.clip_by_value(tf.image.resize(image, [image_size, image_size]), 0.0, 255.0)


def pad_and_crop(image: tf.Tensor, seed: tf.Tensor, padding: int = CIFAR_PADDING) -> tf.Tensor:
  """Zero-pads `padding` pixels on every side and takes a random crop of the original size."""
  padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
  return tf.image.stateless_random_crop(padded, tf.shape(image), seed)


class Augmentation(NamedTuple):
  """How one family of data sets is preprocessed.

  Attributes:
    encoded: whether `train` and `eval` take the encoded image bytes (read with TFDS's
      `SkipDecoding`) rather than a decoded uint8 image.
    train: `(image, seed, image_size, channels) -> float32 image` in [0, 255]; seed is `[2]` int64.
    eval: `(image, image_size, crop_padding, channels) -> float32 image` in [0, 255].
  """

  encoded: bool
  train: Callable[[tf.Tensor, tf.Tensor, int | None, int], tf.Tensor]
  eval: Callable[[tf.Tensor, int | None, int, int], tf.Tensor]


def _fixed_size(flip: bool, crop: bool) -> Augmentation:
  def train(image, seed, image_size, channels):
    del channels
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = resize_if_needed(image, image_size)
    image = pad_and_crop(image, crop_seed) if crop else image
    return tf.image.stateless_random_flip_left_right(image, flip_seed) if flip else image

  def evaluate(image, image_size, crop_padding, channels):
    del crop_padding, channels
    return resize_if_needed(image, image_size)

  return Augmentation(encoded=False, train=train, eval=evaluate)


def _inception(fused: bool) -> Augmentation:
  return Augmentation(
    encoded=True,
    train=lambda image, seed, size, channels: inception_train(image, seed, size, channels, fused),
    eval=lambda image, size, padding, channels: inception_eval(image, size, padding, channels, fused),
  )


AUGMENTATIONS: dict[str, Augmentation] = {
  # ImageNet-style: crops of encoded JPEGs; "inception_unfused" decodes first (PNG data sets, and the
  # baseline of benchmarks/input_throughput.py).
  "inception": _inception(fused=True),
  "inception_unfused": _inception(fused=False),
  # Small fixed-size images (CIFAR): 4-pixel zero padding, random crop, random flip.
  "pad_crop_flip": _fixed_size(flip=True, crop=True),
  "pad_crop": _fixed_size(flip=False, crop=True),
  "none": _fixed_size(flip=False, crop=False),
}
