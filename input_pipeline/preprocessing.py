"""Image preprocessing in TensorFlow, every random operation stateless (seeded by a `[2]` int64 tensor).
Inception (training): a window of area `a h w`, `a ~ U[0.08, 1]`, aspect ratio in [3/4, 4/3] (10 attempts,
else the evaluation crop), of which only that window is decoded (`tf.image.decode_and_crop_jpeg`), resized
to `S x S` (bicubic, clipped to [0, 255]), flipped with probability 1/2 (TF/Flax's `min_object_covered=0.1`
would raise the lowest area to 10%: we keep the paper's 8%). Evaluation: the centre square of side
`⌊S / (S + p) min(h, w)⌋` (crop padding `p` = 32 keeps 224 of 256), resized. Fixed-size images: a random
crop of the image zero-padded by 4 pixels and/or a flip. Normalisation: `(x - μ_c) / σ_c`, ImageNet's
statistics for RGB, `μ = σ = 127.5` otherwise. References: Szegedy et al., "Going Deeper with
Convolutions", CVPR 2015, https://arxiv.org/abs/1409.4842; Flax's ImageNet example.
"""

import functools
from collections.abc import Callable

import tensorflow as tf

from input_pipeline import defaults

AREA_RANGE, ASPECT_RATIO_RANGE, MAX_ATTEMPTS, CIFAR_PADDING = (0.08, 1.0), (3 / 4, 4 / 3), 10, 4
MEAN_RGB, STDDEV_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)


def normalize(images: tf.Tensor, image_size: int | None, dtype: tf.DType) -> tf.Tensor:
  """Images `(..., H, W, C)` bilinearly resized to `S x S` if they differ, then `(x - μ) / σ` in `dtype`."""
  images = tf.cast(images, tf.float32)
  if image_size is not None and tuple(images.shape[-3:-1]) != (image_size, image_size):
    images = tf.image.resize(images, [image_size, image_size])
  mean, stddev = (MEAN_RGB, STDDEV_RGB) if images.shape[-1] == 3 else (127.5, 127.5)
  return tf.cast((images - tf.constant(mean)) / tf.constant(stddev), dtype)


def center_crop_window(image_shape: tf.Tensor, image_size: int, crop_padding: int) -> tf.Tensor:
  """`[y, x, side, side]` of the centred square with `side = ⌊S / (S + p) · min(h, w)⌋`."""
  height, width = image_shape[0], image_shape[1]
  shorter = tf.cast(tf.minimum(height, width), tf.float64)
  side = tf.cast(image_size / (image_size + crop_padding) * shorter, tf.int32)
  return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def random_crop_window(image_shape: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
  """`[y, x, height, width]` of an Inception crop (the centre crop if no attempt fits)."""
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
  whole_image = tf.reduce_all(tf.equal(size[:2], tf.cast(image_shape[:2], tf.int32)))
  window = tf.stack([begin[0], begin[1], size[0], size[1]])
  return tf.where(whole_image, center_crop_window(image_shape, image_size, defaults.CROP_PADDING), window)


def decode_and_crop(image_bytes: tf.Tensor, window_fn: Callable, channels: int, fused: bool) -> tf.Tensor:
  """The window `window_fn(shape)` of an encoded image, uint8; `fused` decodes only the window (JPEG)."""
  if fused:
    window = window_fn(tf.image.extract_jpeg_shape(image_bytes))
    return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=channels)
  image = tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
  window = window_fn(tf.shape(image))
  return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  return tf.clip_by_value(tf.image.resize(image, [image_size, image_size], method="bicubic"), 0.0, 255.0)


def inception_train(image_bytes, seed, image_size, channels, *, fused=True) -> tf.Tensor:
  """Random-resized crop and random flip of an encoded image; float32 `(S, S, channels)`."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  window = functools.partial(random_crop_window, seed=crop_seed, image_size=image_size)
  image = _resize(decode_and_crop(image_bytes, window, channels, fused), image_size)
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def inception_eval(image_bytes, image_size, crop_padding, channels, *, fused=True) -> tf.Tensor:
  """Centre crop of an encoded image resized to `S x S`; float32 `(S, S, channels)`."""
  window = functools.partial(center_crop_window, image_size=image_size, crop_padding=crop_padding)
  return _resize(decode_and_crop(image_bytes, window, channels, fused), image_size)


def pad_crop_flip(image, seed, image_size, channels, *, crop=True, flip=True) -> tf.Tensor:
  """A random crop of the image zero-padded by 4 pixels, and a random flip (as asked), at the stored size."""
  del image_size, channels
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if crop:
    padded = tf.pad(image, [[CIFAR_PADDING, CIFAR_PADDING], [CIFAR_PADDING, CIFAR_PADDING], [0, 0]])
    image = tf.image.stateless_random_crop(padded, tf.shape(image), crop_seed)
  return tf.image.stateless_random_flip_left_right(image, flip_seed) if flip else image


# By name (tfds_data.AUGMENTATIONS): `(train, eval)` functions of one example, None where nothing is done
# per example (fixed-size images are resized and normalised by the batch, `normalize`).
AUGMENTATIONS = {
  "inception": (inception_train, inception_eval),
  "inception_unfused": tuple(functools.partial(fn, fused=False) for fn in (inception_train, inception_eval)),
  "pad_crop_flip": (pad_crop_flip, None),
  "pad_crop": (functools.partial(pad_crop_flip, flip=False), None),
  "none": (None, None),
}
