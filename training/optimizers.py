"""Optimizers and learning-rate schedules built from a config, by name.

Weight decay lives in the optimizer only, never in the loss: LARS feeds β‖w‖ into the trust ratio
(the paper's Algorithm 1; README "The algorithm and its variants"), so a decay term hidden in the loss
would be counted twice and bypass the mask.

By default every optimizer here excludes the same leaves from weight decay and trust ratio: those of
rank ≤ 1 (biases, batch-norm scales and offsets), the default mask of `lars_optax.lars`. The momentum-SGD
baseline and ``optax.lars`` are given that mask explicitly, so that a comparison changes one thing.
``config.lars_mask = "every_leaf"`` makes the LARS optimizers adapt every leaf instead (the paper's
Algorithm 1 on every layer, biases included), which networks without batch norm need at LARS-sized γ_0;
momentum SGD keeps its weight decay on the kernels.
"""

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import ml_collections
import optax

import lars_optax

OptimizerFactory = Callable[[ml_collections.ConfigDict, optax.Schedule], optax.GradientTransformation]

# `lars_mask`: the leaves the LARS optimizers adapt (weight decay and trust ratio); the others get plain
# momentum SGD (lars, larc) or neither (optax_lars).
LARS_MASKS: Mapping[str, Callable[[Any], Any]] = MappingProxyType(
  {"rank": lars_optax.rank_mask, "every_leaf": lars_optax.every_leaf_mask}
)


def _lars(
  config: ml_collections.ConfigDict, schedule: optax.Schedule, *, trust_clip: bool = False
) -> optax.GradientTransformation:
  """The paper's Algorithm 1 (`lars_optax.lars` defaults: LR inside momentum, ‖g‖ + β‖w‖).

  With ``trust_clip=True`` this is LARC: the per-layer rate is clipped at the global one, min(λ, γ_t).
  """
  return lars_optax.lars(
    schedule,
    momentum=config.momentum,
    weight_decay=config.weight_decay,
    trust_coefficient=config.trust_coefficient,
    eps=config.lars_eps,
    nesterov=config.nesterov,
    mask=LARS_MASKS[config.lars_mask],
    trust_clip=trust_clip,
  )


def _sgd(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Momentum SGD (the paper's no-LARS baseline): v ← m·v + (g + β·w); w ← w − γ_t·v."""
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay, mask=lars_optax.rank_mask),
    optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
  )


def _optax_lars(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """``optax.lars`` (trust ratio on ‖g + β·w‖, LR outside the trust ratio), with the `lars_mask`."""
  mask = LARS_MASKS[config.lars_mask]
  return optax.lars(
    schedule,
    weight_decay=config.weight_decay,
    weight_decay_mask=mask,
    trust_coefficient=config.trust_coefficient,
    eps=config.lars_eps,
    trust_ratio_mask=mask,
    momentum=config.momentum,
    nesterov=config.nesterov,
  )


OPTIMIZERS: Mapping[str, OptimizerFactory] = MappingProxyType(
  {
    "lars": _lars,
    "larc": functools.partial(_lars, trust_clip=True),
    "sgd": _sgd,
    "optax_lars": _optax_lars,
  }
)

# How the configured `learning_rate` grows with the global batch B (base batch B0 = `base_batch_size`).
LR_SCALING: Mapping[str, Callable[..., float]] = MappingProxyType(
  {
    "none": lambda learning_rate, batch_size, *, base_batch_size: learning_rate,
    "linear": lars_optax.linear_scaling,
    "sqrt": lars_optax.sqrt_scaling,
  }
)


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """γ_0 after the config's scaling rule: `learning_rate` at `base_batch_size` scaled to `batch_size`."""
  return LR_SCALING[config.lr_scaling](
    config.learning_rate, config.batch_size, base_batch_size=config.base_batch_size
  )


def create_learning_rate_schedule(
  config: ml_collections.ConfigDict, *, total_steps: int, warmup_steps: int
) -> optax.Schedule:
  r"""Linear warm-up from 0 to γ_0, then polynomial decay to `end_learning_rate` (README "Schedules").

  .. math::
    \gamma_t = \gamma_0 t / W \ (t < W), \qquad
    \gamma_t = \gamma_{end} + (\gamma_0 - \gamma_{end})(1 - (t - W)/(T - W))^p \ (t \ge W)

  with :math:`W` = ``warmup_steps``, :math:`T` = ``total_steps``, :math:`p` = ``config.lr_decay_power``.

  Args:
    config: supplies `learning_rate`, `lr_scaling`, `base_batch_size`, `batch_size`,
      `end_learning_rate` and `lr_decay_power`.
    total_steps: the number of optimizer steps, T.
    warmup_steps: the number of warm-up steps, W.

  Returns:
    An Optax schedule of the optimizer's update count.
  """
  return lars_optax.warmup_polynomial_decay(
    peak_learning_rate(config),
    total_steps=total_steps,
    warmup_steps=warmup_steps,
    end_value=config.end_learning_rate,
    power=config.lr_decay_power,
  )


def create_optimizer(
  config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """The optimizer registered as ``config.optimizer`` (one of `OPTIMIZERS`), driven by ``schedule``."""
  return OPTIMIZERS[config.optimizer](config, schedule)
