"""Config validation, run at start before anything is compiled or written.

A mistake in a config (an unknown name, a batch that does not split over the devices) must cost
seconds, not the minutes of a compile on a TPU pod, and must say which field to fix.
"""

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable

import ml_collections

import input_pipeline
import models
from training import optimizers, steps
from training.errors import ConfigError

# Fields every run needs; a recipe (training/recipes.py) may fill them where a config leaves None.
_REQUIRED = (
  "learning_rate",
  "warmup_epochs",
  "num_epochs",
  "momentum",
  "weight_decay",
  "end_learning_rate",
  "lr_decay_power",
  "label_smoothing",
)

# Fields derived from the data set and the devices, which `model_kwargs` must not set.
_DERIVED_MODEL_FIELDS = ("num_classes", "dtype", "axis_name")


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
  """A finite real number (inf and NaN are never a meaningful hyperparameter)."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# (field, test, what the field must be).
_RULES: tuple[tuple[str, Callable[[object], bool], str], ...] = (
  ("batch_size", lambda v: _is_int(v) and v > 0, "a positive integer"),
  ("grad_accum_steps", lambda v: _is_int(v) and v > 0, "a positive integer"),
  ("eval_batch_size", lambda v: v is None or (_is_int(v) and v > 0), "None or a positive integer"),
  ("base_batch_size", lambda v: _is_int(v) and v > 0, "a positive integer"),
  ("learning_rate", lambda v: _is_real(v) and v >= 0, "a non-negative number"),
  ("warmup_epochs", lambda v: _is_real(v) and v >= 0, "a non-negative number"),
  ("num_epochs", lambda v: _is_real(v) and v > 0, "a positive number"),
  ("end_learning_rate", lambda v: _is_real(v) and v >= 0, "a non-negative number"),
  ("lr_decay_power", lambda v: _is_real(v) and v > 0, "a positive number"),
  ("momentum", lambda v: _is_real(v) and 0 <= v < 1, "in [0, 1)"),
  ("weight_decay", lambda v: _is_real(v) and v >= 0, "a non-negative number"),
  ("trust_coefficient", lambda v: _is_real(v) and v > 0, "a positive number"),
  ("lars_eps", lambda v: _is_real(v) and v >= 0, "a non-negative number"),
  ("label_smoothing", lambda v: _is_real(v) and 0 <= v < 1, "in [0, 1)"),
  ("seed", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
  ("num_train_steps", lambda v: _is_int(v) and (v == -1 or v > 0), "-1 or a positive integer"),
  ("log_every_steps", lambda v: _is_int(v) and v > 0, "a positive integer"),
  ("eval_every_steps", lambda v: _is_int(v) and v >= -1, "-1, 0 or a positive integer"),
  ("steps_per_eval", lambda v: _is_int(v) and v >= -1, "-1, 0 or a positive integer"),
  ("diagnostics_every_steps", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
  ("checkpoint_every_steps", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
  ("keep_checkpoints", lambda v: _is_int(v) and v > 0, "a positive integer"),
  ("max_consecutive_skips", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
)

# (field, registry): the field must name an entry of the registry.
_NAMES = (
  ("model", models.MODELS),
  ("optimizer", optimizers.OPTIMIZERS),
  ("lr_scaling", optimizers.LR_SCALING),
  ("parallelism", steps.PARALLELISM),
)


def model_fields(name: str) -> list[str]:
  """The fields ``config.model_kwargs`` may set for model ``name`` (the module's, minus derived ones)."""
  builder = models.MODELS[name]
  while isinstance(builder, functools.partial):
    builder = builder.func
  names = {field.name for field in dataclasses.fields(builder)}
  return sorted(names - set(_DERIVED_MODEL_FIELDS) - {"parent", "name"})


def model_kwargs(config: ml_collections.ConfigDict) -> dict:
  """The set (not None) entries of ``config.model_kwargs``, as keyword arguments of the model."""
  return {key: value for key, value in config.model_kwargs.items() if value is not None}


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int) -> input_pipeline.DatasetInfo:
  """Checks ``config`` for ``num_devices`` devices and returns its data set's description.

  Args:
    config: a training config after `training.recipes.apply_recipe`.
    num_devices: the global device count (all processes).

  Returns:
    The `input_pipeline.DatasetInfo` of ``config.dataset``.

  Raises:
    ValueError: naming the first field that is missing, of the wrong kind, unknown, or inconsistent
      with the device count, before anything is compiled.
  """
  for field in _REQUIRED:
    if config[field] is None:
      raise ValueError(
        f"config.{field} is not set: give --config.{field}=... or a config.recipe that provides it."
      )
  for field, registry in _NAMES:
    if config[field] not in registry:
      raise ValueError(f"config.{field} must be one of {sorted(registry)}, got {config[field]!r}.")
  for field, test, requirement in _RULES:
    if not test(config[field]):
      raise ValueError(f"config.{field} must be {requirement}, got {config[field]!r}.")
  derived = sorted(set(config.model_kwargs) & set(_DERIVED_MODEL_FIELDS))
  if derived:
    raise ValueError(
      f"config.model_kwargs must not set {derived}: they follow from config.dataset, "
      "config.half_precision and config.sync_batch_norm."
    )
  allowed = model_fields(config.model)
  unknown = sorted(set(model_kwargs(config)) - set(allowed))
  if unknown:
    raise ConfigError(
      f"config.model_kwargs.{unknown[0]}: model {config.model!r} has no field {unknown[0]!r}; the "
      f"fields model_kwargs may set are {allowed}."
    )
  if config.warmup_epochs > config.num_epochs:
    raise ValueError(
      f"config.warmup_epochs={config.warmup_epochs} must be at most config.num_epochs={config.num_epochs}."
    )
  shards = num_devices * config.grad_accum_steps
  if config.batch_size % shards:
    raise ValueError(
      f"config.batch_size={config.batch_size} must be divisible by the device count times "
      f"config.grad_accum_steps ({num_devices} x {config.grad_accum_steps} = {shards}), so that "
      "every device gets the same micro-batch."
    )
  if config.eval_batch_size is not None and config.eval_batch_size % num_devices:
    raise ValueError(
      f"config.eval_batch_size={config.eval_batch_size} must be divisible by the device count "
      f"({num_devices})."
    )
  info = input_pipeline.get_dataset_info(
    config.dataset, data_dir=config.data_dir, image_size=config.image_size
  )
  if config.batch_size > info.num_train:
    raise ValueError(
      f"config.batch_size={config.batch_size} is larger than the training split of "
      f"{config.dataset!r} ({info.num_train} examples)."
    )
  return info
