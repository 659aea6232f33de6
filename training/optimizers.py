"""Optimizers and the learning-rate schedule built from a config, by name.

Weight decay lives in the optimizer only (LARS feeds β‖w‖ into the trust ratio), on the leaves of
``weight_decay_mask`` (None: ``lars_mask``'s; momentum SGD: rank ≥ 2, kernels).
"""

import functools
from collections.abc import Callable, Mapping

import optax

import lars_optax

# The names `lars_mask` and `weight_decay_mask` take.
MASKS: Mapping[str, Callable] = {"rank": lars_optax.rank_mask, "every_leaf": lars_optax.every_leaf_mask}


def _decay_mask(config) -> str | None:
  """``config.weight_decay_mask``; None (the optimizer's default) also when a config has no such field."""
  return config.get("weight_decay_mask")


def _hyperparameters(config) -> dict:
  """The arguments `lars_optax.lars` and `optax.lars` share, from the config fields of the same meaning."""
  names = ("momentum", "weight_decay", "trust_coefficient", "nesterov")
  return {"eps": config.lars_eps, **{name: config[name] for name in names}}


def _lars(config, schedule: optax.Schedule, *, trust_clip: bool = False) -> optax.GradientTransformation:
  """The paper's Algorithm 1 (`lars_optax.lars`); ``trust_clip=True``: LARC, min(λ, γ_t) per layer."""
  # None: the library's default, the same leaves as `mask`.
  decay = {} if _decay_mask(config) is None else {"weight_decay_mask": MASKS[_decay_mask(config)]}
  mask = MASKS[config.lars_mask]
  return lars_optax.lars(schedule, mask=mask, trust_clip=trust_clip, **decay, **_hyperparameters(config))


def _sgd(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """Momentum SGD (the paper's baseline): v ← m·v + (g + β·w); w ← w − γ_t·v."""
  decay_mask = MASKS[_decay_mask(config) or "rank"]
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
    optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov),
  )


def _optax_lars(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """``optax.lars`` (trust ratio on ‖g + β·w‖, LR outside it) with the config's masks."""
  masks = {"trust_ratio_mask": MASKS[config.lars_mask]}
  masks["weight_decay_mask"] = MASKS[_decay_mask(config) or config.lars_mask]
  return optax.lars(schedule, **masks, **_hyperparameters(config))


# config.optimizer: (config, schedule) -> optimizer.
OPTIMIZERS = {
  "lars": _lars,
  "larc": functools.partial(_lars, trust_clip=True),
  "sgd": _sgd,
  "optax_lars": _optax_lars,
}

# How the configured `learning_rate` grows with the global batch B (base batch B0 = `base_batch_size`).
LR_SCALING = {"none": lambda lr, batch_size, *, base_batch_size: lr}
LR_SCALING |= {"linear": lars_optax.linear_scaling, "sqrt": lars_optax.sqrt_scaling}


def peak_learning_rate(config) -> float:
  """γ_0 after the config's scaling rule: `learning_rate` at `base_batch_size` scaled to `batch_size`."""
  scale = LR_SCALING[config.lr_scaling]
  return scale(config.learning_rate, config.batch_size, base_batch_size=config.base_batch_size)


def create_learning_rate_schedule(config, *, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """`lars_optax.warmup_polynomial_decay` from 0 to γ_0 over W steps, then to `end_learning_rate` at T."""
  peak, end, power = peak_learning_rate(config), config.end_learning_rate, config.lr_decay_power
  return lars_optax.warmup_polynomial_decay(
    peak_value=peak, total_steps=total_steps, warmup_steps=warmup_steps, end_value=end, power=power
  )


def create_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optimizer registered as ``config.optimizer`` (one of `OPTIMIZERS`), driven by ``schedule``."""
  return OPTIMIZERS[config.optimizer](config, schedule)
