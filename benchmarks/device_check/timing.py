"""The time budget of the check and the statistics of its timings."""

import time

import numpy as np


class Deadline:
  """Seconds left of the budget, counted from the creation of this object."""

  def __init__(self, budget_s: float, start: float | None = None):
    self.budget_s = budget_s
    self.start = time.monotonic() if start is None else start

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def left(self) -> float:
    return self.budget_s - self.elapsed()

  def allows(self, estimate_s: float) -> bool:
    return self.left() >= estimate_s


def median_quartiles(times: list[float]) -> dict[str, float]:
  q25, median, q75 = np.percentile(times, [25, 50, 75])
  return {"median_s": float(median), "q25_s": float(q25), "q75_s": float(q75)}
