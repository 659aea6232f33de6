"""TFDS pipelines: mocked ImageNet/CIFAR-10 for shapes and values, tiny real data sets for the rest.

`tfds.testing.mock_data` ignores split slicing and records no split sizes, so per-process parts,
evaluation padding and steps per epoch are checked on `input_pipeline_testing`'s data sets, built in a
temporary directory (JPEGs of varying size; fixed-size grey PNGs).
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import input_pipeline_testing as testing
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import input_pipeline
from input_pipeline import defaults, preprocessing, tfds_data

TINY = testing.NAME


@pytest.fixture(scope="module")
def grey_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("grey"))
  testing.build_grey(data_dir)
  return data_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  testing.build(data_dir)
  return data_dir


def _normalised_bounds(channels: int = 3):
  mean, stddev = (preprocessing.MEAN_RGB, preprocessing.STDDEV_RGB) if channels == 3 else (127.5, 127.5)
  return (0 - np.array(mean)) / stddev, (255 - np.array(mean)) / stddev


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_mocked_imagenet_batches(dtype):
  with tfds.testing.mock_data(num_examples=12):
    source = tfds_data.open_source("imagenet2012", None, None, None)
    assert source.augmentation == "inception"  # fused, on SkipDecoding bytes.
    info = input_pipeline.get_dataset_info("imagenet2012", image_size=32)
    train = input_pipeline.train_iterator(
      "imagenet2012", global_batch_size=8, seed=0, image_size=32, dtype=dtype, local_device_count=2
    )
    batches = [next(train) for _ in range(3)]  # 12 // 8 = 1 step per epoch: three epochs.
    evaluation = list(
      input_pipeline.eval_dataset(
        "imagenet2012", global_batch_size=8, image_size=32, dtype=dtype, local_device_count=2
      )
    )
  assert info == input_pipeline.DatasetInfo("imagenet2012", 1000, (32, 32, 3), 12, 12)
  low, high = _normalised_bounds()
  for batch in batches + evaluation:
    assert batch["image"].shape == (2, 4, 32, 32, 3) and batch["image"].dtype == np.dtype(dtype)
    assert batch["label"].shape == (2, 4) and batch["label"].dtype == np.int32
    assert np.all((batch["label"] >= 0) & (batch["label"] < 1000))
    image = batch["image"].astype(np.float32)
    assert np.all(image >= low - 0.02) and np.all(image <= high + 0.02)
  assert len(evaluation) == 2
  assert [int(batch["mask"].sum()) for batch in evaluation] == [8, 4]
  assert np.all(evaluation[1]["image"].reshape(8, -1)[evaluation[1]["mask"].reshape(-1) == 0] == 0)


def test_mocked_cifar10_uses_fixed_size_preprocessing():
  with tfds.testing.mock_data(num_examples=6):
    assert tfds_data.open_source("cifar10", None, None, None).augmentation == "pad_crop_flip"
    batch = next(input_pipeline.train_iterator("cifar10", global_batch_size=4, seed=1, local_device_count=1))
    evaluation = next(iter(input_pipeline.eval_dataset("cifar10", global_batch_size=4, local_device_count=1)))
    assert input_pipeline.get_dataset_info("cifar10").image_shape == (32, 32, 3)
    resized = input_pipeline.get_dataset_info("cifar10", image_size=48, augmentation="inception_unfused")
    cropped = next(
      input_pipeline.train_iterator(
        "cifar10",
        global_batch_size=4,
        seed=1,
        image_size=48,
        augmentation="inception_unfused",  # decodes the PNG bytes, then crops.
        local_device_count=1,
      )
    )
    with pytest.raises(input_pipeline.InputError) as error:
      input_pipeline.load_arrays("cifar10")  # in-memory data sets only.
    assert error.value.argument == "dataset"
  assert batch["image"].shape == evaluation["image"].shape == (1, 4, 32, 32, 3)
  assert resized.image_shape == (48, 48, 3) and cropped["image"].shape == (1, 4, 48, 48, 3)
  low, high = _normalised_bounds()
  for images in (batch["image"], evaluation["image"], cropped["image"]):
    assert np.all(images >= low - 1e-5) and np.all(images <= high + 1e-5)


@pytest.mark.slow
def test_tiny_dataset_info(tiny_dir):
  assert input_pipeline.get_dataset_info(TINY, data_dir=tiny_dir) == input_pipeline.DatasetInfo(
    TINY, 3, (224, 224, 3), testing.NUM_TRAIN, testing.NUM_EVAL
  )
  assert input_pipeline.get_dataset_info(TINY, data_dir=tiny_dir, image_size=16).image_shape == (
    16,
    16,
    3,
  )


def _part_ids(data_dir, split, process_index, process_count):
  builder = tfds.builder(TINY, data_dir=data_dir)
  part = builder.as_dataset(
    split=tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
  )
  return [int(example["id"]) for example in part.as_numpy_iterator()]


def _train(data_dir, steps, *, seed=0, start_step=0, process_index=0, process_count=2, cache=False):
  batches = input_pipeline.train_iterator(
    TINY,
    data_dir=data_dir,
    global_batch_size=8,
    seed=seed,
    start_step=start_step,
    image_size=16,
    process_index=process_index,
    process_count=process_count,
    local_device_count=2,
    cache=cache,
  )
  return [next(batches) for _ in range(steps)]


@pytest.mark.slow
def test_training_epochs_read_each_process_part_without_repeats(tiny_dir):
  steps_per_epoch = testing.NUM_TRAIN // 8  # 4 global steps of 8; each process serves 4 of them.
  for index in range(2):
    part = set(_part_ids(tiny_dir, "train", index, 2))
    batches = _train(tiny_dir, 2 * steps_per_epoch, process_index=index)
    for epoch in range(2):
      epoch_batches = batches[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]
      ids = np.concatenate([testing.decode_ids(batch["image"]).ravel() for batch in epoch_batches])
      labels = np.concatenate([batch["label"].ravel() for batch in epoch_batches])
      assert len(ids) == len(set(ids)) == steps_per_epoch * 4  # no example twice in an epoch.
      assert set(ids) <= part
      np.testing.assert_array_equal(labels, [testing.label(i) for i in ids])
      images = np.concatenate([batch["image"].reshape(-1, 16, 16, 3) for batch in epoch_batches])
      np.testing.assert_array_equal(testing.predict(images), [testing.colour(i) for i in ids])


@pytest.mark.slow
def test_training_is_deterministic_and_resumable(tiny_dir):
  reference = _train(tiny_dir, 10, seed=4)  # epochs of 4 steps: crosses two epoch boundaries.
  for cache in (False, True):
    for batch, again in zip(reference, _train(tiny_dir, 10, seed=4, cache=cache), strict=True):
      np.testing.assert_array_equal(batch["image"], again["image"])
  for batch, resumed in zip(reference[6:], _train(tiny_dir, 4, seed=4, start_step=6), strict=True):
    np.testing.assert_array_equal(batch["image"], resumed["image"])
    np.testing.assert_array_equal(batch["label"], resumed["label"])
  other = _train(tiny_dir, 4, seed=5)
  assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(reference, other, strict=False))


@pytest.mark.slow
@pytest.mark.parametrize(
  "process_count,global_batch_size,cache",
  [(1, 4, False), (2, 4, False), (2, 4, True), (3, 6, False), (2, 16, False)],
)
def test_evaluation_covers_the_split_exactly_once(tiny_dir, process_count, global_batch_size, cache):
  num_batches = input_pipeline.num_eval_batches(testing.NUM_EVAL, global_batch_size)
  seen, correct = [], 0
  for index in range(process_count):
    batches = list(
      input_pipeline.eval_dataset(
        TINY,
        data_dir=tiny_dir,
        global_batch_size=global_batch_size,
        image_size=16,
        process_index=index,
        process_count=process_count,
        local_device_count=1,
        cache=cache,
      )
    )
    assert len(batches) == num_batches  # the same on every process.
    mask = np.concatenate([batch["mask"].ravel() for batch in batches])
    assert mask.sum() == len(_part_ids(tiny_dir, "validation", index, process_count))
    images = np.concatenate([batch["image"].reshape(-1, 16, 16, 3) for batch in batches])
    labels = np.concatenate([batch["label"].ravel() for batch in batches])
    assert np.all(images[~mask] == 0) and np.all(labels[~mask] == 0)
    seen.extend(testing.decode_ids(images[mask]).tolist())
    correct += int(np.sum((testing.predict(images) == labels) & mask))
  assert sorted(seen) == list(range(37, 50))
  expected = sum(testing.label(i) == testing.colour(i) for i in range(37, 50))
  assert correct == expected == 10  # ids 39, 43 and 47 are labelled against their colour.


@pytest.mark.slow
@pytest.mark.parametrize("cache", [None, True, False])
def test_a_cached_split_is_read_from_its_files_once(tmp_path, cache):
  """None caches what fits (the tiny set): after the first pass, training and evaluation go on without
  the files; False reads them again."""
  testing.build(str(tmp_path))
  args = dict(data_dir=str(tmp_path), global_batch_size=4, image_size=16, local_device_count=1, cache=cache)
  train = input_pipeline.train_iterator(TINY, seed=0, **args)
  evaluation = input_pipeline.eval_dataset(TINY, **args)
  first_pass = list(evaluation)
  next(train)  # The shuffle buffer (larger than the split) has read every training record.
  for record_file in tmp_path.rglob("*.tfrecord*"):
    record_file.unlink()
  if cache is False:
    with pytest.raises(tf.errors.NotFoundError):
      list(evaluation)
    return
  for batch, again in zip(first_pass, list(evaluation), strict=True):
    np.testing.assert_array_equal(batch["image"], again["image"])
  for _ in range(10 * testing.NUM_TRAIN // 4):  # Ten more epochs.
    assert next(train)["image"].shape == (1, 4, 16, 16, 3)


def test_the_cache_holds_what_fits_in_cache_bytes(monkeypatch, tiny_dir, grey_dir):
  """Held: the encoded examples (JPEGs: their files less TFRecord's 16 bytes of framing per record), the
  decoded images (fixed-size PNGs)."""
  jpeg = tfds_data.open_source(TINY, tiny_dir, None, 16)
  grey = tfds_data.open_source(f"{testing.GREY_NAME}/small", grey_dir, None, None)

  def records_bytes(split: str, count: int) -> int:
    return sum(path.stat().st_size for path in Path(tiny_dir).rglob(f"*-{split}.tfrecord*")) - 16 * count

  held = {
    (jpeg, "train"): records_bytes("train", testing.NUM_TRAIN),
    (jpeg, "validation"): records_bytes("validation", testing.NUM_EVAL),
    (grey, "train"): testing.GREY_SIZES["small"][0] * 28 * 28,
    (grey, "test"): testing.GREY_SIZES["small"][1] * 28 * 28,
  }
  for (source, split), size in held.items():
    for processes in (1, 3):
      per_process = -(-size // processes)  # The part's share, rounded up to whole bytes.
      monkeypatch.setattr(defaults, "CACHE_BYTES", per_process)
      assert source.cached(split, None, processes)
      monkeypatch.setattr(defaults, "CACHE_BYTES", per_process - 1)
      assert not source.cached(split, None, processes)
      assert source.cached(split, True, processes) and not source.cached(split, False, processes)


def test_missing_data_set_names_the_directory_and_the_preparation(tmp_path):
  with pytest.raises(input_pipeline.InputError) as error:
    input_pipeline.get_dataset_info("imagenet2012", data_dir=str(tmp_path))
  message = str(error.value)
  assert error.value.argument == "dataset"
  assert str(tmp_path / "imagenet2012") in message
  assert f"tfds build imagenet2012 --data_dir={tmp_path}" in message
  assert str(tmp_path / "downloads" / "manual") in message
  with pytest.raises(input_pipeline.InputError, match=f"tfds build cifar10 --data_dir={tmp_path}"):
    input_pipeline.train_iterator("cifar10", data_dir=str(tmp_path), global_batch_size=8, seed=0)
  with pytest.raises(input_pipeline.InputError) as error:
    input_pipeline.get_dataset_info("no_such_data_set_anywhere", data_dir=str(tmp_path))
  assert error.value.argument == "dataset"


@pytest.mark.parametrize("missing", ["tensorflow_datasets", "tensorflow"])
def test_missing_tfds_extra_is_one_line_naming_the_install(monkeypatch, tmp_path, missing):
  monkeypatch.setitem(sys.modules, missing, None)  # what an install without the extra looks like.
  calls = [
    lambda: input_pipeline.get_dataset_info("cifar10", data_dir=str(tmp_path)),
    lambda: input_pipeline.train_iterator("cifar10", data_dir=str(tmp_path), global_batch_size=8, seed=0),
    lambda: input_pipeline.eval_dataset("cifar10", data_dir=str(tmp_path), global_batch_size=8),
  ]
  for call in calls:
    with pytest.raises(input_pipeline.InputError) as error:
      call()
    assert error.value.argument == "dataset"
    assert 'pip install -e ".[tfds]"' in str(error.value) and "\n" not in str(error.value)
  assert input_pipeline.get_dataset_info("digits").num_train == 1438  # in-memory data need no extra.


@pytest.mark.timeout(120)
def test_unprepared_data_set_fails_fast_without_tensorflow(tmp_path):
  code = textwrap.dedent(
    f"""
    import sys
    import input_pipeline
    try:
      input_pipeline.get_dataset_info("cifar10", data_dir={str(tmp_path)!r})
    except input_pipeline.InputError as error:
      print(error.argument)
    assert "tensorflow" not in sys.modules, "imported TensorFlow"
    """
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=110)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "dataset" and result.stderr == ""


@pytest.mark.slow
def test_augmentation_choice_is_validated(tiny_dir, grey_dir):
  grey = f"{testing.GREY_NAME}/small"
  cases = [
    (TINY, tiny_dir, "pad_crop_flip"),  # needs fixed-size images.
    (TINY, tiny_dir, "rotate"),
    (grey, grey_dir, "inception"),  # fused JPEG decoding, but PNGs.
    (grey, grey_dir, "bogus"),
  ]
  for name, data_dir, augmentation in cases:
    with pytest.raises(input_pipeline.InputError) as error:
      input_pipeline.get_dataset_info(name, data_dir=data_dir, augmentation=augmentation)
    assert error.value.argument == "augmentation"
    with pytest.raises(input_pipeline.InputError):
      input_pipeline.train_iterator(
        name, data_dir=data_dir, global_batch_size=8, seed=0, augmentation=augmentation
      )
  info = input_pipeline.get_dataset_info(
    grey, data_dir=grey_dir, augmentation="inception_unfused", image_size=16
  )
  assert info.image_shape == (16, 16, 1)


def _grey_train(data_dir, steps, **kwargs):
  kwargs = {"global_batch_size": 8, "seed": 0, "image_size": 16, "local_device_count": 2, **kwargs}
  batches = input_pipeline.train_iterator(f"{testing.GREY_NAME}/small", data_dir=data_dir, **kwargs)
  return [next(batches) for _ in range(steps)]


def _grey_ids(images):
  return np.rint(np.asarray(images, np.float32) * 127.5 + 127.5).astype(np.int64)[..., 0, 0, 0].ravel()


@pytest.mark.slow
def test_fixed_size_grey_images_are_resized_on_the_batch_and_resumable(grey_dir):
  num_train = testing.GREY_SIZES["small"][0]
  info = input_pipeline.get_dataset_info(f"{testing.GREY_NAME}/small", data_dir=grey_dir, image_size=16)
  assert info == input_pipeline.DatasetInfo(f"{testing.GREY_NAME}/small", 10, (16, 16, 1), num_train, 20)
  steps = num_train // 8  # 7 steps per epoch, 56 of the 60 examples.
  batches = _grey_train(grey_dir, 2 * steps)
  for batch in batches:
    assert batch["image"].shape == (2, 4, 16, 16, 1) and batch["image"].dtype == np.float32
    ids = _grey_ids(batch["image"])  # constant images: their value is their id, resized or not.
    np.testing.assert_allclose(
      batch["image"], np.broadcast_to(batch["image"][..., :1, :1, :], (2, 4, 16, 16, 1))
    )
    np.testing.assert_array_equal(batch["label"].ravel(), ids % 10)
  for epoch in range(2):
    ids = np.concatenate([_grey_ids(b["image"]) for b in batches[epoch * steps : (epoch + 1) * steps]])
    assert len(set(ids)) == len(ids) == steps * 8 and set(ids) <= set(range(num_train))
  for batch, resumed in zip(batches[9:], _grey_train(grey_dir, 5, start_step=9), strict=True):
    np.testing.assert_array_equal(batch["image"], resumed["image"])
  evaluation = list(
    input_pipeline.eval_dataset(
      f"{testing.GREY_NAME}/small", data_dir=grey_dir, global_batch_size=8, image_size=16
    )
  )
  mask = np.concatenate([batch["mask"].ravel() for batch in evaluation])
  images = np.concatenate([batch["image"].reshape(-1, 16, 16, 1) for batch in evaluation])
  assert len(evaluation) == 3 and mask.sum() == 20 and np.all(images[~mask] == 0)
  assert sorted(_grey_ids(images[mask][:, None])) == list(range(num_train, num_train + 20))
