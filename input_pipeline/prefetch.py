"""Moves host batches to the devices ahead of the step that consumes them."""

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator


def prefetch_batches(iterator: Iterable, place: Callable, size: int = 2) -> Iterator:
  """Yields ``place(batch)`` for every batch of ``iterator``, keeping ``size`` (>= 1) placed batches ahead.

  ``place`` starts the (asynchronous) host-to-device copy, e.g. a training step's own placement
  (`jax.device_put` with its sharding), so that the copies of batches ``t + 1 ... t + size`` overlap
  the step on batch ``t``.
  """
  iterator = iter(iterator)
  queue = collections.deque(map(place, itertools.islice(iterator, size)))
  while queue:
    yield queue.popleft()
    queue.extend(map(place, itertools.islice(iterator, 1)))
