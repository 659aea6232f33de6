"""Image preprocessing on JPEGs encoded by the tests: crop windows, fused decode-and-crop, crops."""

import input_pipeline_testing as testing
import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import preprocessing


def _texture(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A smooth gradient plus noise: realistic enough for JPEG, different at every pixel."""
  rows, cols = np.mgrid[:height, :width]
  noise = np.random.default_rng(seed).integers(0, 60, (height, width, 3))
  gradient = np.stack([rows * 200 // height, cols * 200 // width, (rows + cols) % 64], axis=-1)
  return (gradient + noise).clip(0, 255).astype(np.uint8)


def _window(shape, seed, image_size=224):
  return preprocessing.random_crop_window(
    tf.constant(shape, tf.int32), tf.constant(seed, tf.int64), image_size
  ).numpy()


def test_random_crop_windows_follow_the_inception_ranges():
  height, width = 300, 400
  windows = np.stack([_window([height, width, 3], [seed, 7]) for seed in range(300)])
  y, x, h, w = windows.T
  assert np.all((y >= 0) & (x >= 0) & (y + h <= height) & (x + w <= width))
  area = h * w / (height * width)
  assert area.min() >= 0.08 - 2 / min(height, width) and area.max() <= 1.0
  # Paper's 8% (not the 10% that `min_object_covered=0.1` would impose): some crops are below 10%.
  assert np.any(area < 0.1)
  # Aspect ratio w / h within [3/4, 4/3], up to the rounding of the width to whole pixels.
  assert np.all((w >= 3 / 4 * h - 1) & (w <= 4 / 3 * h + 1))
  assert len({tuple(window) for window in windows}) > 250  # different seeds, different crops.
  np.testing.assert_array_equal(_window([height, width, 3], [5, 7]), windows[5])


def test_impossible_crops_fall_back_to_the_centre_crop():
  # A 1000 x 10 strip: no window with aspect in [3/4, 4/3] covers 8% of it, all attempts fail.
  shape = tf.constant([1000, 10, 3])
  expected = preprocessing.center_crop_window(shape, 224, 32).numpy()
  side = int(224 / 256 * 10)
  np.testing.assert_array_equal(expected, [(1000 - side + 1) // 2, (10 - side + 1) // 2, side, side])
  for seed in range(5):
    np.testing.assert_array_equal(_window([1000, 10, 3], [seed, 0]), expected)


@pytest.mark.parametrize(
  "shape,image_size,crop_padding,expected",
  [
    ((256, 256), 224, 32, (16, 16, 224, 224)),
    ((300, 500), 224, 32, (19, 119, 262, 262)),  # side = floor(224 / 256 * 300) = 262.
    ((256, 341), 227, 29, (15, 57, 227, 227)),  # AlexNet: 227 out of 256.
    ((375, 500), 224, 32, (24, 86, 328, 328)),  # side = floor(0.875 * 375) = 328.
  ],
)
def test_centre_crop_window(shape, image_size, crop_padding, expected):
  window = preprocessing.center_crop_window(tf.constant([*shape, 3]), image_size, crop_padding)
  assert tuple(window.numpy()) == expected


@pytest.mark.parametrize("window", [(0, 0, 50, 70), (3, 5, 20, 33), (17, 9, 11, 13), (8, 16, 32, 40)])
def test_fused_decode_and_crop_equals_decode_then_crop(window):
  pixels = _texture(50, 70)
  decode = lambda encoded, fused: preprocessing.decode_and_crop(
    tf.constant(encoded), lambda shape: tf.constant(window), 3, fused
  ).numpy()
  y, x, h, w = window
  # 4:4:4 JPEG: identical pixels.
  full_chroma = testing.encode_jpeg(pixels, quality=90)
  reference = tf.io.decode_jpeg(full_chroma, channels=3).numpy()[y : y + h, x : x + w]
  np.testing.assert_array_equal(decode(full_chroma, True), reference)
  np.testing.assert_array_equal(decode(full_chroma, False), reference)
  # 4:2:0 JPEG (most of ImageNet): chroma upsampling on the window's border rows and columns
  # interpolates with chroma samples outside the window, so only the border may differ.
  subsampled = tf.io.encode_jpeg(pixels, quality=90, chroma_downsampling=True).numpy()
  fused = decode(subsampled, True)
  reference = tf.io.decode_jpeg(subsampled, channels=3).numpy()[y : y + h, x : x + w]
  assert fused.shape == reference.shape == (h, w, 3)
  np.testing.assert_array_equal(fused[1:-1, 1:-1], reference[1:-1, 1:-1])


def test_inception_train_is_seeded_and_fused_matches_unfused():
  encoded = tf.constant(testing.encode_jpeg(_texture(60, 80)))
  outputs = []
  for seed in range(8):
    seed = tf.constant([seed, 3], tf.int64)
    fused = preprocessing.inception_train(encoded, seed, 32, 3, fused=True).numpy()
    np.testing.assert_array_equal(fused, preprocessing.inception_train(encoded, seed, 32, 3))
    np.testing.assert_array_equal(fused, preprocessing.inception_train(encoded, seed, 32, 3, fused=False))
    assert fused.shape == (32, 32, 3) and fused.dtype == np.float32
    assert fused.min() >= 0 and fused.max() <= 255
    outputs.append(fused)
  assert len({output.tobytes() for output in outputs}) == 8


def test_inception_train_flips_about_half_the_time():
  # Left half black, right half white: a flip moves the white half to the left.
  pixels = np.zeros((40, 40, 3), np.uint8)
  pixels[:, 20:] = 255
  encoded = tf.constant(testing.encode_jpeg(pixels))
  left_brighter = [
    preprocessing.inception_train(encoded, tf.constant([seed, 0], tf.int64), 16, 3).numpy()[:, :8].mean()
    > 127
    for seed in range(200)
  ]
  # Crops entirely inside one half are ambiguous; the rest are split between the two orientations.
  assert 40 < sum(left_brighter) < 160


def test_inception_eval_is_the_resized_centre_crop():
  pixels = _texture(75, 100)
  encoded = testing.encode_jpeg(pixels)
  side = int(32 / (32 + 4) * 75)  # 66
  y, x = (75 - side + 1) // 2, (100 - side + 1) // 2
  crop = tf.io.decode_jpeg(encoded, channels=3).numpy()[y : y + side, x : x + side]
  expected = tf.clip_by_value(tf.image.resize(crop, [32, 32], method="bicubic"), 0, 255).numpy()
  for fused in (True, False):
    image = preprocessing.inception_eval(tf.constant(encoded), 32, 4, 3, fused=fused).numpy()
    np.testing.assert_allclose(image, expected, atol=1e-4)


def test_normalize_per_channel():
  image = tf.constant([[[0.0, 0.0, 0.0], [255.0, 255.0, 255.0]]])
  expected = [
    [
      [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225],
      [0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225],
    ]
  ]
  np.testing.assert_allclose(preprocessing.normalize(image, None, tf.float32), expected, rtol=1e-6)
  grey = preprocessing.normalize(tf.constant([[[0.0], [127.5], [255.0]]]), None, tf.bfloat16)
  assert grey.dtype == tf.bfloat16
  np.testing.assert_array_equal(tf.cast(grey, tf.float32).numpy().ravel(), [-1.0, 0.0, 1.0])


def test_normalize_resizes_a_batch_of_fixed_size_images():
  batch = np.stack([np.full((28, 28, 1), value, np.uint8) for value in (0, 51, 255)])
  batch[1, :, 14:] = 102  # left half 51, right half 102: bilinear halving keeps the halves.
  served = preprocessing.normalize(tf.constant(batch), 14, tf.float32).numpy()
  assert served.shape == (3, 14, 14, 1)
  pixels = served * 127.5 + 127.5
  np.testing.assert_allclose(pixels[0], 0, atol=1e-4)
  np.testing.assert_allclose(pixels[2], 255, atol=1e-4)
  np.testing.assert_allclose(pixels[1, :, :6], 51, atol=1e-4)
  np.testing.assert_allclose(pixels[1, :, 8:], 102, atol=1e-4)
  same = preprocessing.normalize(tf.constant(batch), 28, tf.float32).numpy()
  np.testing.assert_allclose(same * 127.5 + 127.5, batch, atol=1e-4)  # the stored size: no resize.


@pytest.mark.parametrize("flip", [False, True])
def test_pad_crop_takes_a_window_of_the_zero_padded_image(flip):
  image = tf.constant(np.arange(1, 8 * 8 + 1, dtype=np.float32).reshape(8, 8, 1))
  padded = np.pad(image.numpy(), [(4, 4), (4, 4), (0, 0)])
  offsets = set()
  for seed in range(40):
    crop = preprocessing.pad_crop_flip(image, tf.constant([seed, 1], tf.int64), None, 1, flip=flip).numpy()
    windows = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)]
    matches = [
      w for w in windows if np.array_equal(crop, _flip(padded[w[0] : w[0] + 8, w[1] : w[1] + 8], w[2]))
    ]
    assert len(matches) == 1 and (flip or not matches[0][2])
    offsets.add(matches[0])
  assert len(offsets) > (30 if flip else 20)  # flips are drawn too, about half the time.


def _flip(image, flip):
  return image[:, ::-1] if flip else image
