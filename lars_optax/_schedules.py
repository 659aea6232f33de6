"""Learning-rate schedules and scaling rules used with LARS.

Step-index convention: Optax evaluates a schedule at the update count *before* incrementing it,
so the k-th update (k = 1, 2, ...) uses the schedule's value at t = k - 1.
"""

from __future__ import annotations

import bisect
import math
import sys
from typing import NamedTuple

import optax
from jax.typing import ArrayLike

from lars_optax._validation import (
  INT32_MAX,
  NON_NEGATIVE,
  POSITIVE,
  ArgumentValueError,
  check_bool,
  check_int,
  check_number,
)


def warmup_polynomial_decay(
  peak_value: ArrayLike,
  *,
  total_steps: int,
  warmup_steps: int = 0,
  init_value: ArrayLike = 0.0,
  end_value: ArrayLike = 0.0,
  power: ArrayLike = 2.0,
  warmup_from_first_step: bool = False,
) -> optax.Schedule:
  r"""Linear warm-up followed by polynomial decay: the LARS paper's and MLPerf's schedule.

  With :math:`W` = ``warmup_steps``, :math:`T` = ``total_steps``, :math:`\gamma_{init}` =
  ``init_value``, :math:`\gamma_0` = ``peak_value``, :math:`\gamma_{end}` = ``end_value`` and
  :math:`p` = ``power``, the value at step :math:`t` is

  .. math::
    \gamma_t = \begin{cases}
      \gamma_{init} + (\gamma_0 - \gamma_{init})\, t / W, & 0 \le t < W \\
      \gamma_{end} + (\gamma_0 - \gamma_{end}) (1 - (t - W) / (T - W))^p, & W \le t < T \\
      \gamma_{end}, & t \ge T
    \end{cases}

  so the decay runs over the :math:`T - W` steps left after warm-up and reaches the peak exactly
  at :math:`t = W`. With ``warmup_from_first_step=False`` (default), :math:`t` is Optax's count
  before the increment: with ``init_value=0`` and :math:`W > 0` the first update has learning
  rate 0, a step that changes nothing (MLPerf's reference does the same). To make every update
  count, pass ``warmup_from_first_step=True``: the schedule is then evaluated at :math:`t` = count
  + 1, so update :math:`k = 1, \dots, T` uses :math:`\gamma_k`; the first update gets
  :math:`\gamma_{init} + (\gamma_0 - \gamma_{init}) / W`, update :math:`W` the peak and update
  :math:`T` exactly :math:`\gamma_{end}`. (A positive ``init_value`` also avoids the empty step.)
  MLPerf's reference divides the decay by :math:`T - W + 1` rather than :math:`T - W`; the two
  differ by one step's worth of decay.

  Args:
    peak_value: :math:`\gamma_0`, the value reached at the end of warm-up.
    total_steps: :math:`T > 0`, the number of training steps (warm-up included).
    warmup_steps: :math:`0 \le W \le T`, the number of linear warm-up steps.
    init_value: :math:`\gamma_{init} \ge 0`, the value at :math:`t = 0`.
    end_value: :math:`\gamma_{end} \ge 0`, the value from :math:`t = T` on.
    power: :math:`p > 0`, the power of the decay (2 in the paper and in MLPerf).
    warmup_from_first_step: evaluate at count + 1 instead of count (see above).

  Returns:
    An ``optax.Schedule``; jit-able, takes Python ints or traced integer counts.

  Raises:
    TypeError: for a step count that is not an integer, a value that is not a real number (str, None,
      bool), or a non-bool ``warmup_from_first_step``.
    ValueError: for an infinite, NaN or out-of-range value or count, a value beyond float32's range or a
      step count beyond int32's (Optax counts steps in int32). Each error has the attribute ``argument``,
      the argument's name (e.g. ``"total_steps"``).

  Example:
    >>> import lars_optax
    >>> schedule = lars_optax.warmup_polynomial_decay(2.0, total_steps=10, warmup_steps=4)
    >>> [round(float(schedule(t)), 4) for t in (0, 2, 4, 7, 10)]
    [0.0, 1.0, 2.0, 0.5, 0.0]

  References:
    You, Gitman & Ginsburg, `Large Batch Training of Convolutional Networks
    <https://arxiv.org/abs/1708.03888>`_, 2017 (poly(2) decay with warm-up).
    Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
    <https://arxiv.org/abs/1706.02677>`_, 2017 (gradual warm-up).
    Kumar et al., `Scale MLPerf-0.6 models on Google TPU-v3 Pods
    <https://arxiv.org/abs/1909.09756>`_, 2019 (the MLPerf ResNet-50 LARS schedule).
  """
  total_steps = check_int("total_steps", total_steps, POSITIVE)
  warmup_steps = check_int("warmup_steps", warmup_steps, NON_NEGATIVE)
  if warmup_steps > total_steps:
    raise ArgumentValueError(
      "warmup_steps", f"warmup_steps must be <= total_steps={total_steps}, got {warmup_steps}."
    )
  check_number("power", power, POSITIVE)
  check_bool("warmup_from_first_step", warmup_from_first_step)
  for name, value in (
    ("peak_value", peak_value),
    ("init_value", init_value),
    ("end_value", end_value),
  ):
    check_number(name, value)

  decay_steps = total_steps - warmup_steps
  if decay_steps > 0:
    decay = optax.polynomial_schedule(peak_value, end_value, power, transition_steps=decay_steps)
  else:
    decay = optax.constant_schedule(end_value)
  if warmup_steps > 0:
    warmup = optax.linear_schedule(init_value, peak_value, transition_steps=warmup_steps)
    schedule = optax.join_schedules([warmup, decay], boundaries=[warmup_steps])
  else:
    schedule = decay
  if warmup_from_first_step:
    return lambda count: schedule(count + 1)
  return schedule


def epochs_to_steps(epochs: float, steps_per_epoch: float, *, name: str = "epochs") -> int:
  r"""The whole number of steps closest to ``epochs`` x ``steps_per_epoch``, halves rounded up.

  :math:`\lfloor E \cdot S + 1/2 \rfloor`: 2.5 epochs of 1 step give 3 steps (Python's ``round``
  would give 2). Every epoch-to-step conversion of the project goes through this function, so that a
  schedule and the training loop that runs it agree on its length.

  Args:
    epochs: :math:`E \ge 0`, possibly fractional.
    steps_per_epoch: :math:`S > 0`, possibly fractional (``num_examples / batch_size``).
    name: the argument name used in error messages.

  Returns:
    The number of steps, :math:`\ge 0`.

  Raises:
    ValueError: for negative or non-finite inputs, or a result beyond int32's range (a step count in
      Optax's int32 counter); its ``argument`` attribute is ``name`` (or ``"steps_per_epoch"``).

  Example:
    >>> import lars_optax
    >>> [lars_optax.epochs_to_steps(e, 1) for e in (0.4, 0.5, 2.5)]
    [0, 1, 3]
  """
  check_number(name, epochs, NON_NEGATIVE)
  check_number("steps_per_epoch", steps_per_epoch, POSITIVE)
  steps = math.floor(epochs * steps_per_epoch + 0.5)
  if steps > INT32_MAX:
    raise ArgumentValueError(
      name,
      f"{name}={epochs} at {steps_per_epoch} steps per epoch gives {steps:,} steps, more than an int32 "
      f"step count holds ({INT32_MAX:,}).",
    )
  return steps


def warmup_polynomial_decay_from_epochs(
  peak_value: ArrayLike,
  *,
  num_epochs: float,
  warmup_epochs: float,
  steps_per_epoch: float,
  init_value: ArrayLike = 0.0,
  end_value: ArrayLike = 0.0,
  power: ArrayLike = 2.0,
  warmup_from_first_step: bool = False,
) -> optax.Schedule:
  r"""`warmup_polynomial_decay` with its lengths given in (possibly fractional) epochs.

  :math:`T = \mathrm{round}(E \cdot S)` and :math:`W = \mathrm{round}(E_w \cdot S)` with
  :math:`E` = ``num_epochs``, :math:`E_w` = ``warmup_epochs``, :math:`S` = ``steps_per_epoch``,
  where round goes to the nearest integer and halves go up (2.5 -> 3). Each product is rounded
  once, so :math:`W \le T` whenever :math:`E_w \le E`.

  Args:
    peak_value: :math:`\gamma_0`, the value reached at the end of warm-up.
    num_epochs: :math:`E`, the length of training in epochs (must give at least one step).
    warmup_epochs: :math:`E_w \le E`, the length of the warm-up in epochs.
    steps_per_epoch: :math:`S > 0`, e.g. from `steps_per_epoch`; may be fractional
      (``num_examples / batch_size``) because only the products are rounded.
    init_value: value at step 0.
    end_value: value from step :math:`T` on.
    power: power of the decay.
    warmup_from_first_step: see `warmup_polynomial_decay`.

  Returns:
    An ``optax.Schedule``.

  Example:
    >>> import lars_optax
    >>> schedule = lars_optax.warmup_polynomial_decay_from_epochs(
    ...   1.0, num_epochs=2.5, warmup_epochs=0.5, steps_per_epoch=2
    ... )  # T = 5 steps, W = 1
    >>> [round(float(schedule(t)), 4) for t in range(6)]
    [0.0, 1.0, 0.5625, 0.25, 0.0625, 0.0]
  """
  check_number("steps_per_epoch", steps_per_epoch, POSITIVE)
  total_steps = epochs_to_steps(num_epochs, steps_per_epoch, name="num_epochs")
  warmup_steps = epochs_to_steps(warmup_epochs, steps_per_epoch, name="warmup_epochs")
  if total_steps == 0:
    raise ArgumentValueError(
      "num_epochs", f"num_epochs={num_epochs} gives no step at {steps_per_epoch} steps per epoch."
    )
  if warmup_epochs > num_epochs:
    raise ArgumentValueError(
      "warmup_epochs", f"warmup_epochs must be <= num_epochs={num_epochs}, got {warmup_epochs}."
    )
  return warmup_polynomial_decay(
    peak_value,
    total_steps=total_steps,
    warmup_steps=warmup_steps,
    init_value=init_value,
    end_value=end_value,
    power=power,
    warmup_from_first_step=warmup_from_first_step,
  )


def steps_per_epoch(num_examples: int, batch_size: int, *, drop_remainder: bool = True) -> int:
  r"""Optimizer steps per epoch: :math:`\lfloor N/B \rfloor` or :math:`\lceil N/B \rceil`.

  Args:
    num_examples: :math:`N > 0`, the size of the training set.
    batch_size: :math:`B > 0`, the global batch size.
    drop_remainder: floor (the last partial batch is dropped) when True, ceil otherwise.

  Returns:
    The number of steps, at least 1 (`ValueError` naming ``num_examples`` otherwise).

  Example:
    >>> import lars_optax
    >>> [lars_optax.steps_per_epoch(1_281_167, 32_768, drop_remainder=d) for d in (True, False)]
    [39, 40]
  """
  num_examples = check_int("num_examples", num_examples, POSITIVE, upper=sys.maxsize)
  batch_size = check_int("batch_size", batch_size, POSITIVE)
  check_bool("drop_remainder", drop_remainder)
  if drop_remainder and num_examples < batch_size:
    raise ArgumentValueError(
      "num_examples",
      f"num_examples must be >= batch_size={batch_size} when dropping the remainder, got {num_examples}.",
    )
  return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def _batch_ratio(base_learning_rate: float, batch_size: int, base_batch_size: int) -> float:
  check_number("base_learning_rate", base_learning_rate, NON_NEGATIVE)
  check_number("batch_size", batch_size, POSITIVE)
  check_number("base_batch_size", base_batch_size, POSITIVE)
  return float(batch_size / base_batch_size)


def linear_scaling(base_learning_rate: float, batch_size: int, *, base_batch_size: int = 256) -> float:
  r"""Linear scaling rule :math:`\gamma = \gamma_{base} \cdot B / B_0`.

  For the momentum-SGD baselines; the paper's LARS recipes use a tabulated :math:`\gamma_0` per
  batch size instead (see `mlperf_resnet50_hparams`).

  Args:
    base_learning_rate: :math:`\gamma_{base}`, tuned at batch size :math:`B_0`.
    batch_size: :math:`B`, the new global batch size.
    base_batch_size: :math:`B_0`.

  Returns:
    :math:`\gamma`, a float.

  Example:
    >>> import lars_optax
    >>> lars_optax.linear_scaling(0.1, 8192)  # Goyal et al.: 0.1 per 256 examples
    3.2

  References:
    Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
    <https://arxiv.org/abs/1706.02677>`_, 2017.
  """
  return base_learning_rate * _batch_ratio(base_learning_rate, batch_size, base_batch_size)


def sqrt_scaling(base_learning_rate: float, batch_size: int, *, base_batch_size: int = 256) -> float:
  r"""Square-root scaling rule :math:`\gamma = \gamma_{base} \sqrt{B / B_0}`.

  For the momentum-SGD baselines; the paper's LARS recipes use a tabulated :math:`\gamma_0`.

  Args:
    base_learning_rate: :math:`\gamma_{base}`, tuned at batch size :math:`B_0`.
    batch_size: :math:`B`, the new global batch size.
    base_batch_size: :math:`B_0`.

  Returns:
    :math:`\gamma`, a float.

  Example:
    >>> import lars_optax
    >>> lars_optax.sqrt_scaling(0.1, 25_600)  # 100 times the batch: 10 times the rate
    1.0

  References:
    Krizhevsky, `One weird trick for parallelizing convolutional neural networks
    <https://arxiv.org/abs/1404.5997>`_, 2014.
  """
  return base_learning_rate * math.sqrt(_batch_ratio(base_learning_rate, batch_size, base_batch_size))


class MLPerfHparams(NamedTuple):
  """LARS hyperparameters of the MLPerf ResNet-50 recipe for one global batch size."""

  learning_rate: float  # peak γ0 of `warmup_polynomial_decay`
  warmup_epochs: float  # linear warm-up from 0
  momentum: float
  weight_decay: float  # β, fed to LARS (not to the loss)
  num_epochs: float  # length of the poly(2) schedule
  end_learning_rate: float = 1e-4
  power: float = 2.0
  label_smoothing: float = 0.1

  def learning_rate_schedule(self, steps_per_epoch: float) -> optax.Schedule:
    """The recipe's schedule: `warmup_polynomial_decay_from_epochs` from 0 to `learning_rate`."""
    return warmup_polynomial_decay_from_epochs(
      self.learning_rate,
      num_epochs=self.num_epochs,
      warmup_epochs=self.warmup_epochs,
      steps_per_epoch=steps_per_epoch,
      end_value=self.end_learning_rate,
      power=self.power,
    )


# The recipe: (exclusive upper bound on the global batch size, hyperparameters). Every number is a default
# of Google's JAX ResNet-50 MLPerf Training v0.7 submission (Kumar et al. 2021, in the docstring below).
# This table is the one place these numbers live.
_MLPERF_TABLE = (
  (16_384, MLPerfHparams(10.0, 5, 0.9, 2e-4, 56)),
  (32_768, MLPerfHparams(25.0, 5, 0.9, 2e-4, 56)),
  (65_536, MLPerfHparams(29.0, 18, 0.929, 1e-4, 64)),
  (math.inf, MLPerfHparams(23.080977304670448, 33, 0.9537213777059405, 1e-4, 92)),
)


def mlperf_resnet50_hparams(batch_size: int) -> MLPerfHparams:
  """MLPerf's LARS recipe for ResNet-50 on ImageNet (to 75.9% top-1) at a global batch size.

  The recipe is a table of four batch-size ranges (below 16K, 32K and 64K, and from 64K on), each giving
  the peak learning rate γ0, the warm-up epochs, momentum, weight decay β and the number of epochs; its
  values are in this function's source (``_MLPERF_TABLE``) and are printed by
  ``[lars_optax.mlperf_resnet50_hparams(b) for b in (8192, 16384, 32768, 65536)]``. Every row shares the
  end learning rate, power 2 and label smoothing of :class:`MLPerfHparams`'s defaults, trust coefficient
  0.001, eps 0, and biases and batch-norm parameters excluded (the :func:`lars` defaults). Rows above 64K
  extrapolate the 64K recipe.

  Args:
    batch_size: the positive global batch size.

  Returns:
    The `MLPerfHparams` of the row holding ``batch_size``.

  Example:
    >>> import lars_optax
    >>> hparams = lars_optax.mlperf_resnet50_hparams(32_768)
    >>> hparams.learning_rate, hparams.warmup_epochs, hparams.momentum, hparams.num_epochs
    (29.0, 18, 0.929, 64)
    >>> schedule = hparams.learning_rate_schedule(steps_per_epoch=1_281_167 / 32_768)

  References:
    Kumar et al., `Scale MLPerf-0.6 models on Google TPU-v3 Pods <https://arxiv.org/abs/1909.09756>`_,
    2019; Kumar et al., `Exploring the limits of concurrency in ML training on Google TPUs
    <https://arxiv.org/abs/2011.03641>`_, 2021 (the JAX entry at batch 65,536).
  """
  batch_size = check_int("batch_size", batch_size, POSITIVE, upper=sys.maxsize)
  bounds = [bound for bound, _ in _MLPERF_TABLE]
  return _MLPERF_TABLE[bisect.bisect_right(bounds, batch_size)][1]
