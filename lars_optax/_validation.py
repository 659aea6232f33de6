"""Early, readable checks of hyperparameters, option names, dtypes and schedules.

What is checked at construction, and how:

- A number (Python, NumPy scalar or 0-d NumPy array): it must be a real number, not a bool, finite, and in
  its documented range; else ``TypeError`` (wrong type: str, None, bool, complex...) or ``ValueError``
  (inf, NaN, out of range), each message naming the argument.
- A JAX array or tracer: only what is free to check without reading its value (a numeric, non-bool dtype and
  a scalar shape), so that ``optax.inject_hyperparams(lars_optax.lars)(...)`` keeps working under
  ``jax.jit`` and no construction waits for a device. Its value is not checked.
- A schedule (a callable learning rate): evaluated eagerly at the steps of :data:`SCHEDULE_CHECK_STEPS`; a
  negative or non-finite value there is a ``ValueError``. A schedule that cannot be evaluated outside
  ``jit`` (it raises, or its value is traced) is not checked; nor are steps other than those.
"""

import math
from collections.abc import Callable, Collection
from numbers import Real
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

Scalar = float | jax.Array
"""A checked numeric hyperparameter as the update uses it: a real number, a JAX array or a tracer."""

# Step 0 and powers of ten up to 10^7: where a hand-written decay that extrapolates below zero shows it.
SCHEDULE_CHECK_STEPS = (0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000)


class Interval(NamedTuple):
  """A range of allowed values, and its wording in messages (kept stable: callers match on it)."""

  lower: float
  upper: float
  lower_closed: bool
  upper_closed: bool

  def __contains__(self, value: object) -> bool:
    x = float(value)  # type: ignore[arg-type]
    above = x >= self.lower if self.lower_closed else x > self.lower
    below = x <= self.upper if self.upper_closed else x < self.upper
    return above and below

  def describe(self) -> str:
    if self.upper == math.inf:
      return f"{'>=' if self.lower_closed else '>'} {self.lower:g}"
    left, right = "[" if self.lower_closed else "(", "]" if self.upper_closed else ")"
    return f"in {left}{self.lower:g}, {self.upper:g}{right}"


NON_NEGATIVE = Interval(0.0, math.inf, True, False)
POSITIVE = Interval(0.0, math.inf, False, False)
UNIT = Interval(0.0, 1.0, True, False)  # [0, 1): momentum


def _describe(value: Any) -> str:
  return f"{type(value).__name__} {value!r}"


def check_number(name: str, value: ArrayLike, interval: Interval = NON_NEGATIVE) -> Scalar:
  """Returns ``value`` unchanged if it is a finite real number in ``interval``; else TypeError/ValueError.

  The message names ``name``. JAX arrays and tracers are checked only for a numeric scalar type (see the
  module docstring).
  """
  _check_number(name, value, interval)
  return cast(Scalar, value)


def _check_number(name: str, value: Any, interval: Interval) -> None:
  if isinstance(value, jax.Array):  # includes tracers: no value is read.
    if value.dtype == jnp.bool_ or not jnp.issubdtype(value.dtype, jnp.number):
      raise TypeError(f"{name} must be a real number, got an array of dtype {value.dtype}.")
    if value.ndim != 0:
      raise ValueError(f"{name} must be a scalar, got an array of shape {value.shape}.")
    return
  if isinstance(value, np.ndarray):
    if value.ndim != 0:
      raise ValueError(f"{name} must be a scalar, got an array of shape {value.shape}.")
    value = value[()]
  if isinstance(value, bool | np.bool_):
    raise TypeError(f"{name} must be a real number, not a bool, got {value!r}.")
  if not isinstance(value, Real | np.integer | np.floating):
    raise TypeError(f"{name} must be a real number, got {_describe(value)}.")
  if not math.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value!r}.")
  if value not in interval:
    raise ValueError(f"{name} must be {interval.describe()}, got {value!r}.")


def check_at_least(name: str, value: ArrayLike, lower: float) -> Scalar:
  """:func:`check_number` with the interval [``lower``, inf)."""
  return check_number(name, value, Interval(lower, math.inf, True, False))


def check_positive(name: str, value: ArrayLike) -> Scalar:
  """:func:`check_number` with the interval (0, inf)."""
  return check_number(name, value, POSITIVE)


def check_momentum(name: str, value: ArrayLike) -> Scalar:
  """:func:`check_number` with the interval [0, 1)."""
  return check_number(name, value, UNIT)


def check_learning_rate(name: str, value: Any) -> None:
  """A non-negative finite number, or a schedule whose values at :data:`SCHEDULE_CHECK_STEPS` are."""
  if callable(value):
    check_schedule(name, value)
  else:
    check_number(name, value, NON_NEGATIVE)


def check_schedule(name: str, schedule: Callable[[Any], Any]) -> None:
  """Raises ValueError when ``schedule`` is negative or non-finite at one of :data:`SCHEDULE_CHECK_STEPS`.

  Each step is passed as an int32 scalar array, as Optax passes its count; evaluation stops at the first
  step where the schedule raises or returns a traced value (a schedule meant for ``jit`` only).
  """
  for step in SCHEDULE_CHECK_STEPS:
    try:
      value = schedule(jnp.asarray(step, jnp.int32))
      if isinstance(value, jax.core.Tracer):
        return
      value = np.asarray(value)
    except Exception:  # The real update reports the schedule's own error.
      return
    if value.dtype.kind not in "iuf" or value.ndim != 0:
      return
    if not np.isfinite(value) or value < 0:
      raise ValueError(
        f"{name} must be a schedule of finite values >= 0, got {float(value)!r} at step {step} "
        f"(checked at steps {', '.join(map(str, SCHEDULE_CHECK_STEPS))})."
      )


def check_choice(name: str, value: Any, allowed: Collection[str]) -> None:
  """Raises TypeError (not a str) or ValueError (unknown) unless ``value`` is one of ``allowed``."""
  if not isinstance(value, str):
    raise TypeError(f"{name} must be one of {sorted(allowed)}, got {_describe(value)}.")
  if value not in allowed:
    raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}.")


def check_bool(name: str, value: Any) -> None:
  """Raises TypeError when ``value`` is not a Python bool (a traced flag cannot pick a code path)."""
  if not isinstance(value, bool):
    raise TypeError(f"{name} must be a Python bool, got {_describe(value)}.")


def check_axis_name(name: str, value: Any) -> None:
  """Raises TypeError unless ``value`` is None, an axis name (str) or a tuple of them."""
  if value is None or isinstance(value, str):
    return
  if isinstance(value, tuple) and value and all(isinstance(axis, str) for axis in value):
    return
  raise TypeError(
    f"{name} must be None, a mapped axis name (str) or a tuple of them, got {_describe(value)}."
  )


def floating_dtype(name: str, dtype: Any) -> np.dtype | None:
  """``dtype`` as a floating-point ``np.dtype`` (None stays None); TypeError/ValueError naming ``name``."""
  if dtype is None:
    return None
  allowed = "None or a floating-point dtype (e.g. jnp.float32, jnp.bfloat16 or 'float32')"
  if isinstance(dtype, bool) or not isinstance(dtype, str | type | np.dtype):
    raise TypeError(f"{name} must be {allowed}, got {_describe(dtype)}.")
  try:
    resolved = jnp.dtype(dtype)
  except TypeError:
    raise ValueError(f"{name} must be {allowed}, got {dtype!r}.") from None
  if not jnp.issubdtype(resolved, jnp.floating):
    raise ValueError(f"{name} must be {allowed}, got {resolved.name}.")
  return resolved


NO_PARAMS_MSG = (
  "LARS needs the current parameters: call update(updates, state, params) with params (the trust ratio "
  "is η‖w‖/(‖g‖ + β‖w‖ + ε))."
)
