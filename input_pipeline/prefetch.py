"""Moves host batches to the local devices ahead of the step that consumes them."""

import collections
import itertools
from collections.abc import Iterable, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


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
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ValueError(f"`size` must be a positive integer, got {size!r}.")
  devices = list(jax.local_devices() if devices is None else devices)
  sharding = NamedSharding(Mesh(np.array(devices), ("devices",)), PartitionSpec("devices"))

  def put(leaf: np.ndarray) -> jax.Array:
    if np.ndim(leaf) == 0 or np.shape(leaf)[0] != len(devices):
      raise ValueError(
        f"Every batch leaf must have a leading axis of {len(devices)} (one slice per device), "
        f"got shape {np.shape(leaf)}."
      )
    return jax.device_put(leaf, sharding)

  return _prefetch(iter(iterator), size, put)


def _prefetch(iterator: Iterator, size: int, put) -> Iterator:
  queue = collections.deque()
  for batch in itertools.islice(iterator, size):
    queue.append(jax.tree.map(put, batch))
  while queue:
    yield queue.popleft()
    for batch in itertools.islice(iterator, 1):
      queue.append(jax.tree.map(put, batch))
