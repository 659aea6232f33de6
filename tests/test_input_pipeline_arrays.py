"""In-memory pipelines (digits, MNIST-1D, fake): splits, order, sharding, padding, argument checks."""

import hashlib
import importlib
import inspect
import pathlib
import random
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from sklearn.datasets import load_digits

import input_pipeline
from input_pipeline import arrays, digits, mnist1d

# sha256 of the digits test indices (int64, little endian) of the documented split. Changing the
# split changes every published digits number: this must never change.
DIGITS_TEST_SHA256 = "13dcf57fdb4f693217b8358b7c700a09cd994b27057f9355aae354b6059ac254"


def _indexed_loader(num_train: int, num_eval: int):
  """A data set whose example `i` is an image filled with `i` (train) or `1000 + i` (eval)."""

  def load(*, image_size=None, data_dir=None):
    del image_size, data_dir
    train = np.arange(num_train, dtype=np.float32)
    evaluation = 1000 + np.arange(num_eval, dtype=np.float32)
    return arrays.ArraySplits(
      np.broadcast_to(train[:, None, None, None], (num_train, 2, 2, 1)),
      (np.arange(num_train) % 7).astype(np.int32),
      np.broadcast_to(evaluation[:, None, None, None], (num_eval, 2, 2, 1)),
      (np.arange(num_eval) % 7).astype(np.int32),
      7,
    )

  return load


@pytest.fixture
def indexed(monkeypatch):
  monkeypatch.setitem(input_pipeline.ARRAY_DATASETS, "indexed", _indexed_loader(50, 23))
  return "indexed"


def _ids(batch):
  """Example ids of a batch of the indexed data set, in the order of the flattened batch."""
  return batch["image"][..., 0, 0, 0].reshape(-1).astype(np.int64)


def test_digits_split_is_fixed_and_stratified():
  labels = load_digits().target
  train, test = digits.split_indices(labels)
  assert hashlib.sha256(test.astype("<i8").tobytes()).hexdigest() == DIGITS_TEST_SHA256
  assert (len(train), len(test)) == (1438, 359)
  np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
  expected = np.rint(0.2 * np.bincount(labels)).astype(int)
  np.testing.assert_array_equal(np.bincount(labels[test]), expected)
  assert np.bincount(labels[test]).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]


@pytest.mark.parametrize("image_size", [None, 16])
def test_digits_arrays_match_an_independent_normalisation(image_size):
  raw = load_digits()
  train, test = digits.split_indices(raw.target)
  pixels = raw.images / 16.0
  mean, std = pixels[train].mean(), pixels[train].std()
  factor = 1 if image_size is None else image_size // 8
  expected = np.kron((pixels - mean) / std, np.ones((factor, factor)))[..., None]
  x_train, y_train, x_test, y_test = input_pipeline.load_arrays("digits", image_size=image_size)
  assert x_train.dtype == np.float32 and y_train.dtype == np.int32
  assert x_train.shape == (1438, 8 * factor, 8 * factor, 1)
  np.testing.assert_allclose(x_train, expected[train], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(x_test, expected[test], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(y_test, raw.target[test])
  assert abs(x_train.mean()) < 1e-5 and abs(x_train.std() - 1) < 1e-5


def test_dataset_info_of_in_memory_data_sets():
  assert input_pipeline.get_dataset_info("digits", image_size=32) == input_pipeline.DatasetInfo(
    "digits", 10, (32, 32, 1), 1438, 359
  )
  assert input_pipeline.get_dataset_info("fake") == input_pipeline.DatasetInfo(
    "fake", 1000, (224, 224, 3), 1_281_167, 50_000
  )


def test_train_order_is_the_documented_permutation(indexed):
  # 50 examples, B = 8: 6 steps per epoch; steps 0..13 cross two epoch boundaries.
  batches = input_pipeline.train_iterator(
    indexed, global_batch_size=8, seed=3, process_count=1, process_index=0, local_device_count=2
  )
  for step in range(14):
    batch = next(batches)
    epoch, position = divmod(step, 6)
    expected = np.random.default_rng([3, epoch]).permutation(50)[position * 8 : position * 8 + 8]
    np.testing.assert_array_equal(_ids(batch), expected)
    np.testing.assert_array_equal(batch["label"].reshape(-1), expected % 7)
    assert batch["image"].shape == (2, 4, 2, 2, 1) and batch["label"].shape == (2, 4)


def test_resume_with_start_step_and_seeds(indexed):
  def take(steps, **kwargs):
    batches = input_pipeline.train_iterator(
      indexed, global_batch_size=8, process_count=1, process_index=0, local_device_count=1, **kwargs
    )
    return [_ids(next(batches)) for _ in range(steps)]

  reference = take(16, seed=5)
  np.testing.assert_array_equal(take(16, seed=5), reference)
  np.testing.assert_array_equal(take(7, seed=5, start_step=9), reference[9:])
  assert not np.array_equal(take(16, seed=6), reference)


@pytest.mark.parametrize("process_count,local_device_count", [(2, 2), (4, 1), (2, 4)])
def test_processes_serve_disjoint_slices_of_the_global_batch(indexed, process_count, local_device_count):
  single = input_pipeline.train_iterator(
    indexed, global_batch_size=16, seed=0, process_count=1, process_index=0, local_device_count=1
  )
  per_process = [
    input_pipeline.train_iterator(
      indexed,
      global_batch_size=16,
      seed=0,
      process_count=process_count,
      process_index=index,
      local_device_count=local_device_count,
    )
    for index in range(process_count)
  ]
  for _ in range(5):
    parts = [next(batches) for batches in per_process]
    assert parts[0]["image"].shape[:2] == (local_device_count, 16 // process_count // local_device_count)
    np.testing.assert_array_equal(np.concatenate([_ids(part) for part in parts]), _ids(next(single)))


@pytest.mark.parametrize("process_count,local_device_count,batch", [(1, 1, 8), (2, 2, 8), (3, 1, 6)])
def test_eval_covers_every_example_exactly_once(indexed, process_count, local_device_count, batch):
  num_batches = input_pipeline.num_eval_batches(23, batch)
  seen = []
  for index in range(process_count):
    batches = list(
      input_pipeline.eval_dataset(
        indexed,
        global_batch_size=batch,
        process_count=process_count,
        process_index=index,
        local_device_count=local_device_count,
      )
    )
    assert len(batches) == num_batches == -(-23 // batch)
    for part in batches:
      mask = part["mask"].reshape(-1)
      assert part["mask"].dtype == np.bool_ and part["mask"].shape == part["label"].shape
      assert np.all(part["image"].reshape(len(mask), -1)[~mask] == 0)
      assert np.all(part["label"].reshape(-1)[~mask] == 0)
      ids = _ids(part)[mask] - 1000
      np.testing.assert_array_equal(part["label"].reshape(-1)[mask], ids % 7)
      seen.extend(ids.tolist())
  assert sorted(seen) == list(range(23))


def test_masked_accuracy_equals_unpadded_accuracy():
  x_train, y_train, x_test, y_test = input_pipeline.load_arrays("digits")
  centroids = np.stack([x_train[y_train == c].mean(0) for c in range(10)])

  def predict(images):
    flat = images.reshape(-1, 64)
    return np.argmin(((flat[:, None] - centroids.reshape(1, 10, 64)) ** 2).sum(-1), axis=1)

  correct = count = 0
  for batch in input_pipeline.eval_dataset("digits", global_batch_size=64, local_device_count=4):
    mask = batch["mask"].reshape(-1)
    hits = predict(batch["image"]) == batch["label"].reshape(-1)
    correct, count = correct + np.sum(hits & mask), count + np.sum(mask)
  assert count == 359
  assert correct / count == np.mean(predict(x_test) == y_test)
  assert 0.8 < correct / count < 1.0


def test_bfloat16_images(indexed):
  batch = next(
    input_pipeline.train_iterator(
      indexed, global_batch_size=8, seed=0, dtype="bfloat16", process_count=1, process_index=0
    )
  )
  assert batch["image"].dtype == ml_dtypes.bfloat16 == jnp.bfloat16
  evaluation = next(iter(input_pipeline.eval_dataset(indexed, global_batch_size=8, dtype="bfloat16")))
  assert evaluation["image"].dtype == jnp.bfloat16


def test_fake_data_tiles_a_pool():
  splits = arrays.load_fake(image_size=6)
  assert splits.train_images.shape == (1_281_167, 6, 6, 3) and len(splits.eval_labels) == 50_000
  indices = np.array([0, 64, 77, 1_281_166])
  np.testing.assert_array_equal(splits.train_images[indices], splits.train_images[indices % 64])
  assert not np.array_equal(splits.train_images[0], splits.train_images[1])
  labels = splits.train_labels[np.arange(1000)]
  assert np.all((labels >= 0) & (labels < 1000))
  batch = next(
    input_pipeline.train_iterator("fake", global_batch_size=8, seed=0, image_size=8, dtype="bfloat16")
  )
  assert batch["image"].shape[2:] == (8, 8, 3) and batch["image"].dtype == jnp.bfloat16
  with pytest.raises(input_pipeline.InputError) as error:
    input_pipeline.load_arrays("fake")  # generated batch by batch: no arrays.
  assert error.value.argument == "dataset"


def test_mnist1d_is_generated_offline(monkeypatch, tmp_path):
  def no_download(*args, **kwargs):
    raise AssertionError("mnist1d.data.get_dataset downloads; it must not be called.")

  monkeypatch.setattr(importlib.import_module("mnist1d.data"), "get_dataset", no_download)
  assert inspect.signature(mnist1d.load).parameters["num_samples"].default >= 50_000
  random.seed(123)
  np.random.seed(123)  # noqa: NPY002 (checks that the legacy global state is left alone)
  before = (random.random(), np.random.random())  # noqa: NPY002
  random.seed(123)
  np.random.seed(123)  # noqa: NPY002
  splits = mnist1d.load(num_samples=200, data_dir=str(tmp_path))
  assert (random.random(), np.random.random()) == before  # noqa: NPY002
  assert splits.train_images.shape == (160, 40, 1) and splits.eval_images.shape == (40, 40, 1)
  assert splits.train_images.dtype == np.float32 and splits.train_labels.dtype == np.int32
  everything = np.concatenate([splits.train_images, splits.eval_images])
  assert abs(everything.mean()) < 1e-4 and abs(everything.std() - 1) < 1e-4  # standardised.
  assert np.bincount(np.concatenate([splits.train_labels, splits.eval_labels])).tolist() == [20] * 10
  mnist1d.load.cache_clear()
  cached = mnist1d.load(num_samples=200, data_dir=str(tmp_path))  # read back from the .npz.
  assert list(tmp_path.glob("mnist1d/*.npz"))
  for stored, generated in zip(cached[:4], splits[:4], strict=True):
    np.testing.assert_array_equal(stored, generated)
  with pytest.raises(ValueError, match="image_size"):
    mnist1d.load(num_samples=200, image_size=32)


@pytest.mark.timeout(120)
def test_digits_path_does_not_import_tensorflow():
  code = textwrap.dedent(
    """
    import sys
    import input_pipeline
    info = input_pipeline.get_dataset_info("digits")
    batch = next(input_pipeline.train_iterator("digits", global_batch_size=8, seed=0))
    next(iter(input_pipeline.eval_dataset("digits", global_batch_size=8)))
    assert "tensorflow" not in sys.modules, "digits imported TensorFlow"
    print(info.num_train)
    """
  )
  root = str(pathlib.Path(__file__).resolve().parents[1])
  result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=110)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "1438"


@pytest.mark.parametrize(
  "kwargs,argument",
  [
    ({"global_batch_size": 12, "local_device_count": 8}, "global_batch_size"),
    ({"global_batch_size": 0}, "global_batch_size"),
    ({"global_batch_size": 8, "seed": -1}, "seed"),
    ({"global_batch_size": 8, "start_step": -2}, "start_step"),
    ({"global_batch_size": 8, "dtype": "int8"}, "dtype"),
    ({"global_batch_size": 8, "process_index": 2, "process_count": 2}, "process_index"),
    ({"global_batch_size": 2048}, "global_batch_size"),
    ({"global_batch_size": 8, "image_size": 12}, "image_size"),
    ({"global_batch_size": 8, "image_size": True}, "image_size"),
    ({"global_batch_size": 8, "seed": False}, "seed"),
    ({"global_batch_size": 8, "augmentation": "bogus"}, "augmentation"),
    ({"global_batch_size": 8, "augmentation": "pad_crop_flip"}, "augmentation"),
    ({"global_batch_size": 8, "shuffle_buffer_size": 0}, "shuffle_buffer_size"),
  ],
)
def test_bad_arguments_are_rejected_at_the_call(kwargs, argument):
  kwargs = {"seed": 0, "local_device_count": 1, **kwargs}
  with pytest.raises(input_pipeline.InputError) as error:
    input_pipeline.train_iterator("digits", **kwargs)  # no next(): raised before the first batch.
  assert error.value.argument == argument and f"`{argument}`" in str(error.value)


@pytest.mark.parametrize(
  "name,fields,argument",
  [
    ("digits", {"augmentation": "bogus"}, "augmentation"),
    ("mnist1d", {"augmentation": "inception"}, "augmentation"),
    ("digits", {"image_size": 0}, "image_size"),
    (3, {}, "dataset"),
  ],
)
def test_get_dataset_info_names_the_field(name, fields, argument):
  with pytest.raises(input_pipeline.InputError) as error:
    input_pipeline.get_dataset_info(name, **fields)
  assert error.value.argument == argument and f"`{argument}`" in str(error.value)


def test_get_dataset_info_accepts_no_augmentation():
  info = input_pipeline.get_dataset_info("digits", augmentation="none")
  assert info == input_pipeline.get_dataset_info("digits") == ("digits", 10, (8, 8, 1), 1438, 359)
