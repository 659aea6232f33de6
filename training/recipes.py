"""Published recipes: the hyperparameters a paper used at each batch size, and the top-1 it reported.

A config names its recipe (``config.recipe``); at start the recipe fills every hyperparameter the config
leaves unset (``None``) for the configured global batch size, so that both
``--config=configs/resnet50_lars.py:32768`` and ``--config.batch_size=32768`` pick the paper's γ_0 and
warm-up for 32K. Values given explicitly (``--config.learning_rate=35``) always win.

The LARS paper (You, Gitman & Ginsburg 2017) tabulates γ_0 only at some batch sizes; at any other batch
size its recipes refuse to guess and ask for ``learning_rate``.
"""

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import ml_collections

import lars_optax
from training.errors import ConfigError

_PAPER = "You, Gitman & Ginsburg 2017, arXiv:1708.03888"


class Recipe(NamedTuple):
  """What a recipe says about one global batch size."""

  hparams: Mapping[str, Any]  # config fields it fills where the config has None
  expected_top1: float | None  # ImageNet top-1 (%) the source reports at this batch size, if any
  source: str  # where the numbers come from


class _PaperRow(NamedTuple):
  learning_rate: float  # γ_0 of the poly(2) schedule
  warmup_epochs: float | None  # None: the family's default warm-up
  top1: float


# The LARS paper's ImageNet results: 100 epochs, η = 0.001, m = 0.9, β = 5e-4, poly(2) decay after warm-up.
# Warm-up: AlexNet 2 epochs, AlexNet-BN 5, ResNet-50 5 to 12 (tabulated per batch; 5 where the
# paper gives none).
_PAPER_LARS: Mapping[str, tuple[float, Mapping[int, _PaperRow]]] = {
  "alexnet_lars": (
    2,
    {
      512: _PaperRow(2, None, 58.7),
      4096: _PaperRow(10, None, 58.5),
      8192: _PaperRow(10, None, 58.2),
      16384: _PaperRow(14, None, 55.0),
      32768: _PaperRow(14, None, 46.9),
    },
  ),
  "alexnet_bn_lars": (
    5,
    {
      512: _PaperRow(2, None, 60.2),
      4096: _PaperRow(10, None, 60.4),
      8192: _PaperRow(14, None, 60.1),
      16384: _PaperRow(23, None, 59.3),
      32768: _PaperRow(22, None, 57.8),
    },
  ),
  "resnet50_lars": (
    5,
    {
      256: _PaperRow(4, None, 73.8),
      1024: _PaperRow(9, 5, 73.3),
      8192: _PaperRow(30, 5, 73.5),
      16384: _PaperRow(33, 12, 72.9),
      32768: _PaperRow(40, 12, 72.5),
    },
  ),
}

# Top-1 of the no-LARS baselines (momentum SGD, linear LR scaling, warm-up). AlexNet: the paper.
# ResNet-50: the paper has no SGD baseline; the figures are a JAX ResNet-50 with Nesterov momentum and
# linear scaling over 90 epochs (Nado et al. 2021, arXiv:2102.06356), the recipe configs/resnet50_sgd.py
# follows.
_BASELINES: Mapping[str, tuple[str, Mapping[int, float]]] = {
  "alexnet_sgd": (_PAPER, {512: 58.8, 4096: 53.1, 8192: 44.8}),
  "alexnet_bn_sgd": (_PAPER, {512: 60.2, 4096: 58.9, 8192: 58.0}),
  "resnet50_sgd": ("Nado et al. 2021, arXiv:2102.06356", {4096: 76.2, 32768: 71.7}),
}


def _paper_lars(name: str, config: ml_collections.ConfigDict) -> Recipe:
  default_warmup, table = _PAPER_LARS[name]
  row = table.get(config.batch_size)
  if row is None:
    if config.learning_rate is None:
      raise ConfigError(
        f"recipe {name!r}: the paper tabulates γ_0 only for batch_size in {sorted(table)}, got "
        f"batch_size={config.batch_size}. Give --config.learning_rate (and --config.warmup_epochs) "
        "to train at this batch size."
      )
    return Recipe({"warmup_epochs": default_warmup}, None, _PAPER)
  warmup = default_warmup if row.warmup_epochs is None else row.warmup_epochs
  return Recipe({"learning_rate": row.learning_rate, "warmup_epochs": warmup}, row.top1, _PAPER)


def _baseline(name: str, config: ml_collections.ConfigDict) -> Recipe:
  source, table = _BASELINES[name]
  return Recipe({}, table.get(config.batch_size), source)


def _mlperf_resnet50(config: ml_collections.ConfigDict) -> Recipe:
  hparams = lars_optax.mlperf_resnet50_hparams(config.batch_size)
  fields = {
    "learning_rate": hparams.learning_rate,
    "warmup_epochs": hparams.warmup_epochs,
    "momentum": hparams.momentum,
    "weight_decay": hparams.weight_decay,
    "num_epochs": hparams.num_epochs,
    "end_learning_rate": hparams.end_learning_rate,
    "lr_decay_power": hparams.power,
    "label_smoothing": hparams.label_smoothing,
  }
  return Recipe(fields, 75.9, "MLPerf Training ResNet-50 reference (LARS, target 75.9%)")


RECIPES: Mapping[str, Callable[[ml_collections.ConfigDict], Recipe]] = MappingProxyType(
  {
    **{name: (lambda config, name=name: _paper_lars(name, config)) for name in _PAPER_LARS},
    **{name: (lambda config, name=name: _baseline(name, config)) for name in _BASELINES},
    "mlperf_resnet50": _mlperf_resnet50,
  }
)


def apply_recipe(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Recipe | None]:
  """Fills the fields ``config.recipe`` provides wherever ``config`` has None.

  Args:
    config: a training config; ``config.recipe`` is a key of `RECIPES` or ``None``.

  Returns:
    A copy of ``config`` with the recipe's values filled in, and the `Recipe` (None without one).

  Raises:
    ConfigError: for an unknown recipe, or a batch size a paper recipe has no value for.
  """
  if config.recipe is None:
    return config, None
  if config.recipe not in RECIPES:
    raise ConfigError(f"config.recipe must be one of {sorted(RECIPES)} or None, got {config.recipe!r}.")
  recipe = RECIPES[config.recipe](config)
  config = config.copy_and_resolve_references()
  for field, value in recipe.hparams.items():
    if config[field] is None:
      config[field] = value
  return config, recipe
