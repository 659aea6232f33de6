"""Names of the data sets held in memory; any other name is looked up in TFDS."""

from collections.abc import Callable

from input_pipeline import arrays, digits, fake, mnist1d

# A loader is called as `loader(image_size=..., data_dir=...)` and returns `arrays.ArraySplits`.
ArrayLoader = Callable[..., arrays.ArraySplits]

ARRAY_DATASETS: dict[str, ArrayLoader] = {
  "digits": digits.load,
  "mnist1d": mnist1d.load,
  "fake": fake.FakeDataset(),
}


def register_dataset(name: str, loader: ArrayLoader, *, overwrite: bool = False) -> None:
  """Makes an in-memory data set available by name to every function of `input_pipeline`.

  Example: `register_dataset("fake_cifar", FakeDataset((32, 32, 3), 10, 50_000, 10_000))`.

  Raises:
    ValueError: if `name` is taken and `overwrite` is False.
  """
  if name in ARRAY_DATASETS and not overwrite:
    raise ValueError(f"`name` {name!r} is already registered; pass overwrite=True to replace it.")
  ARRAY_DATASETS[name] = loader
