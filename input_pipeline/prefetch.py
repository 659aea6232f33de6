"""Moves host batches to the devices ahead of the step that consumes them."""

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from input_pipeline import validation


def prefetch_batches(iterator: Iterable, place: Callable, size: int = 2) -> Iterator:
  """Yields ``place(batch)`` for every batch of ``iterator``, keeping ``size`` placed batches ahead.

  ``place`` starts the (asynchronous) host-to-device copy, e.g. a training step's own placement
  (`jax.device_put` with its sharding), so that the copies of batches ``t + 1 ... t + size`` overlap
  the step on batch ``t``.

  Raises:
    ValueError: if ``size`` is not a positive integer.
  """
  validation.check_int(size, "size", minimum=1)
  return _prefetch(iter(iterator), place, size)


def _prefetch(iterator: Iterator, place: Callable, size: int) -> Iterator:
  queue = collections.deque(map(place, itertools.islice(iterator, size)))
  while queue:
    yield queue.popleft()
    queue.extend(map(place, itertools.islice(iterator, 1)))


def prefetch_to_device(
  iterator: Iterable, size: int = 2, devices: Sequence[jax.Device] | None = None
) -> Iterator:
  """Yields the batches of `iterator` as device arrays, keeping `size` transfers in flight.

  Every leaf must be shaped `(len(devices), ...)`; slice `i` goes to `devices[i]`, the layout
  `jax.pmap` expects, so the pmapped step consumes the arrays without another copy. Transfers are
  asynchronous: while the step runs on batch `t`, batches `t + 1 ... t + size` are being copied.

  Args:
    iterator: yields pytrees of host arrays (e.g. `train_iterator`'s dictionaries).
    size: number of batches on the devices ahead of the consumer (at least 1).
    devices: defaults to `jax.local_devices()`.

  Yields:
    The same pytrees with `jax.Array` leaves sharded over `devices` along the leading axis.

  Raises:
    ValueError: if `size` < 1, or (when a batch arrives) a leaf's leading axis is not
      `len(devices)`.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  sharding = NamedSharding(Mesh(np.array(devices), ("devices",)), PartitionSpec("devices"))

  def put(leaf: np.ndarray) -> jax.Array:
    if np.ndim(leaf) == 0 or np.shape(leaf)[0] != len(devices):
      raise ValueError(
        f"Every batch leaf must have a leading axis of {len(devices)} (one slice per device), "
        f"got shape {np.shape(leaf)}."
      )
    return jax.device_put(leaf, sharding)

  return prefetch_batches(iterator, lambda batch: jax.tree.map(put, batch), size)
