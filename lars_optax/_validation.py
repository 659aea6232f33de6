"""Early, readable checks of hyperparameters and option names.

Only concrete Python or NumPy numbers are checked: tracers, JAX arrays and schedules pass through untouched,
so that ``optax.inject_hyperparams(lars_optax.lars)(...)`` keeps working under ``jax.jit``.
"""

from collections.abc import Collection
from numbers import Real
from typing import Any

import numpy as np


def _concrete_number(value: Any) -> float | None:
  """Returns ``value`` as a float when it is a plain Python/NumPy real scalar, else None."""
  if isinstance(value, bool):
    return None
  if isinstance(value, Real | np.number) or (isinstance(value, np.ndarray) and value.ndim == 0):
    return float(value)
  return None


def check_at_least(name: str, value: Any, lower: float) -> None:
  """Raises ValueError when a concrete ``value`` is below ``lower`` (or NaN)."""
  number = _concrete_number(value)
  if number is not None and not number >= lower:
    raise ValueError(f"{name} must be >= {lower}, got {value!r}.")


def check_positive(name: str, value: Any) -> None:
  """Raises ValueError when a concrete ``value`` is not > 0."""
  number = _concrete_number(value)
  if number is not None and not number > 0:
    raise ValueError(f"{name} must be > 0, got {value!r}.")


def check_momentum(name: str, value: Any) -> None:
  """Raises ValueError when a concrete momentum is outside [0, 1)."""
  number = _concrete_number(value)
  if number is not None and not 0.0 <= number < 1.0:
    raise ValueError(f"{name} must be in [0, 1), got {value!r}.")


def check_choice(name: str, value: Any, allowed: Collection[str]) -> None:
  """Raises ValueError when ``value`` is not one of the ``allowed`` option names."""
  if value not in allowed:
    raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}.")


def check_bool(name: str, value: Any) -> None:
  """Raises TypeError when ``value`` is not a Python bool (a traced flag cannot pick a code path)."""
  if not isinstance(value, bool):
    raise TypeError(f"{name} must be a Python bool, got {type(value).__name__} {value!r}.")


NO_PARAMS_MSG = (
  "LARS needs the current parameters: call update(updates, state, params) with params (the trust ratio "
  "is η‖w‖/(‖g‖ + β‖w‖ + ε))."
)
