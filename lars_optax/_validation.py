"""Early, readable checks of hyperparameters, option names, dtypes and schedules.

Every ``ValueError``/``TypeError`` raised here for a bad argument carries the attribute ``argument``: the
parameter's name as in the public signature (``"learning_rate"``, ``"momentum"``, ``"total_steps"``...), so
that a program can map the failure to its own setting by name instead of parsing the message.

What is checked at construction, and how:

- A number (Python, NumPy scalar or 0-d NumPy array): it must be a real number, not a bool, finite, within
  float32's range (hyperparameters are used in float32), and in its documented range; else ``TypeError``
  (wrong type: str, None, bool, complex...) or ``ValueError`` (inf, NaN, too large, out of range).
- A JAX array or tracer: only what is free to check without reading its value (a numeric, non-bool dtype and
  a scalar shape), so that ``optax.inject_hyperparams(lars_optax.lars)(...)`` keeps working under
  ``jax.jit`` and no construction waits for a device. Its value is not checked.
- A schedule (a callable learning rate): evaluated eagerly at the steps of :data:`SCHEDULE_CHECK_STEPS`; a
  negative or non-finite value there is a ``ValueError``, and so is an exception raised by the schedule
  (chained as its cause). A schedule whose value is traced outside ``jit``, or that needs a mapped axis
  name, is not checked; nor are steps other than those.
"""

import math
from collections.abc import Callable, Collection
from numbers import Real
from typing import Any, TypeGuard, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

Scalar = float | jax.Array
"""A checked numeric hyperparameter as the update uses it: a real number, a JAX array or a tracer."""

# Step 0 and powers of ten up to 10^7: where a hand-written decay that extrapolates below zero shows it.
SCHEDULE_CHECK_STEPS = (0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000)

FLOAT32_MAX = float(np.finfo(np.float32).max)
INT32_MAX = int(np.iinfo(np.int32).max)


class ArgumentValueError(ValueError):
  """A ``ValueError`` about one argument; ``argument`` is its name as in the public signature."""

  def __init__(self, argument: str, message: str) -> None:
    super().__init__(message)
    self.argument = argument


class ArgumentTypeError(TypeError):
  """A ``TypeError`` about one argument; ``argument`` is its name as in the public signature."""

  def __init__(self, argument: str, message: str) -> None:
    super().__init__(message)
    self.argument = argument


# The allowed ranges of numbers: a test and its wording in messages.
Range = tuple[Callable[[float], bool], str]
NON_NEGATIVE: Range = (lambda x: x >= 0, ">= 0")
POSITIVE: Range = (lambda x: x > 0, "> 0")
UNIT_INTERVAL: Range = (lambda x: 0 <= x < 1, "in [0, 1)")  # momentum


def _describe(value: Any) -> str:
  return f"{type(value).__name__} {value!r}"


def is_int(value: Any) -> TypeGuard[int | np.integer]:
  """True for a Python or NumPy integer that is not a bool: the one test of "an integer" in the library."""
  return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_int(name: str, value: object, allowed: Range = NON_NEGATIVE, *, upper: int = INT32_MAX) -> int:
  """``value`` as an int if it is an integer (not a bool) in ``allowed`` and at most ``upper``.

  The default ``upper`` is int32's maximum: step counts are int32 in Optax's state.
  """
  if not is_int(value):
    raise ArgumentTypeError(name, f"{name} must be an integer, got {_describe(value)}.")
  _check_range(name, int(value), allowed)
  if value > upper:
    raise ArgumentValueError(name, f"{name} must be at most {upper:,} (an int32 step count), got {value:,}.")
  return int(value)


def _check_range(name: str, value: Any, allowed: Range) -> None:
  test, wording = allowed
  if not test(value):
    raise ArgumentValueError(name, f"{name} must be {wording}, got {value!r}.")


def check_number(name: str, value: ArrayLike, allowed: Range = NON_NEGATIVE) -> Scalar:
  """Returns ``value`` unchanged if it is a real number, finite in float32 and in ``allowed``.

  Raises ``ArgumentTypeError``/``ArgumentValueError`` naming ``name`` otherwise. JAX arrays and tracers are
  checked only for a numeric scalar type (see the module docstring).
  """
  if isinstance(value, jax.Array):  # includes tracers: no value is read.
    if value.dtype == jnp.bool_ or not jnp.issubdtype(value.dtype, jnp.number):
      raise ArgumentTypeError(name, f"{name} must be a real number, got an array of dtype {value.dtype}.")
    if value.ndim != 0:
      raise ArgumentValueError(name, f"{name} must be a scalar, got an array of shape {value.shape}.")
    return value
  number: Any = value
  if isinstance(number, np.ndarray):
    if number.ndim != 0:
      raise ArgumentValueError(name, f"{name} must be a scalar, got an array of shape {number.shape}.")
    number = number[()]
  if isinstance(number, bool | np.bool_):
    raise ArgumentTypeError(name, f"{name} must be a real number, not a bool, got {number!r}.")
  if not isinstance(number, Real | np.integer | np.floating):
    raise ArgumentTypeError(name, f"{name} must be a real number, got {_describe(number)}.")
  if not math.isfinite(number):
    raise ArgumentValueError(name, f"{name} must be finite, got {number!r}.")
  if abs(float(number)) > FLOAT32_MAX:
    raise ArgumentValueError(
      name, f"{name} must be at most {FLOAT32_MAX:.7g} in magnitude (it is used in float32), got {number!r}."
    )
  _check_range(name, number, allowed)
  return cast(Scalar, value)


def check_learning_rate(name: str, value: Any) -> None:
  """A non-negative finite number, or a schedule whose values at :data:`SCHEDULE_CHECK_STEPS` are."""
  if callable(value):
    check_schedule(name, value)
  else:
    check_number(name, value, NON_NEGATIVE)


def check_schedule(name: str, schedule: Callable[[Any], Any]) -> None:
  """Raises ValueError when ``schedule`` raises, or is negative or non-finite, at a checked step.

  Each step of :data:`SCHEDULE_CHECK_STEPS` is passed as an int32 scalar array, as Optax passes its count;
  checking stops at the first step whose value is traced or not a real scalar (a schedule meant for ``jit``
  only, or one returning per-layer values), or that needs a mapped axis (``jax.lax.axis_index``), which
  the update then uses as it is.
  """
  for step in SCHEDULE_CHECK_STEPS:
    try:
      value = schedule(jnp.asarray(step, jnp.int32))
    except NameError as error:
      if "axis name" in str(error):  # It needs a mapped axis (pmap, shard_map): only the update can run it.
        return
      raise ArgumentValueError(
        name, f"{name} is a schedule that raised {type(error).__name__} at step {step}: {error}"
      ) from error
    except Exception as error:  # Re-raised, naming the argument and the step.
      raise ArgumentValueError(
        name, f"{name} is a schedule that raised {type(error).__name__} at step {step}: {error}"
      ) from error
    if isinstance(value, jax.core.Tracer):
      return
    value = np.asarray(value)
    if value.dtype.kind not in "iuf" or value.ndim != 0:
      return
    if not np.isfinite(value) or value < 0 or abs(float(value)) > FLOAT32_MAX:
      raise ArgumentValueError(
        name,
        f"{name} must be a schedule of finite values >= 0 (within float32), got {float(value)!r} at step "
        f"{step} (checked at steps {', '.join(map(str, SCHEDULE_CHECK_STEPS))}).",
      )


def check_choice(name: str, value: Any, allowed: Collection[str]) -> None:
  """Raises TypeError (not a str) or ValueError (unknown) unless ``value`` is one of ``allowed``."""
  if not isinstance(value, str):
    raise ArgumentTypeError(name, f"{name} must be one of {sorted(allowed)}, got {_describe(value)}.")
  if value not in allowed:
    raise ArgumentValueError(name, f"{name} must be one of {sorted(allowed)}, got {value!r}.")


def check_bool(name: str, value: Any) -> None:
  """Raises TypeError when ``value`` is not a Python bool (a traced flag cannot pick a code path)."""
  if not isinstance(value, bool):
    raise ArgumentTypeError(name, f"{name} must be a Python bool, got {_describe(value)}.")


def check_axis_name(name: str, value: Any) -> None:
  """Raises TypeError unless ``value`` is None, an axis name (str) or a tuple of them."""
  if value is None or isinstance(value, str):
    return
  if isinstance(value, tuple) and value and all(isinstance(axis, str) for axis in value):
    return
  raise ArgumentTypeError(
    name, f"{name} must be None, a mapped axis name (str) or a tuple of them, got {_describe(value)}."
  )


def floating_dtype(name: str, dtype: Any) -> np.dtype | None:
  """``dtype`` as a floating-point ``np.dtype`` (None stays None); TypeError/ValueError naming ``name``."""
  if dtype is None:
    return None
  allowed = "None or a floating-point dtype (e.g. jnp.float32, jnp.bfloat16 or 'float32')"
  if isinstance(dtype, bool) or not isinstance(dtype, str | type | np.dtype):
    raise ArgumentTypeError(name, f"{name} must be {allowed}, got {_describe(dtype)}.")
  try:
    resolved = jnp.dtype(dtype)
  except TypeError:
    raise ArgumentValueError(name, f"{name} must be {allowed}, got {dtype!r}.") from None
  if not jnp.issubdtype(resolved, jnp.floating):
    raise ArgumentValueError(name, f"{name} must be {allowed}, got {resolved.name}.")
  return resolved


def check_floating_leaves(name: str, tree: Any, why: str) -> None:
  """Raises TypeError naming the first leaf of ``tree`` (by its key path) that is not floating point."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = np.dtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
      where = jax.tree_util.keystr(path, simple=True, separator="/")
      raise ArgumentTypeError(name, f"{name} at {where!r} must be floating point, got {dtype.name}: {why}")


NO_PARAMS_MSG = (
  "LARS needs the current parameters: call update(updates, state, params) with params (the trust ratio "
  "is η‖w‖/(‖g‖ + β‖w‖ + ε))."
)
