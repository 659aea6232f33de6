"""Config validation, run at start before anything is compiled or written.

A mistake in a config (an unknown name, a batch that does not split over the devices) must cost
seconds, not the minutes of a compile on a TPU pod, and must say which field to fix: every check raises
`training.errors.ConfigError` naming the ``config.<field>``. The optimizer and schedule
hyperparameters are not re-checked here: `lars_optax` validates them when they are passed to it (at
check time, see `check_optimizer` and `training.plan.make_plan`), and `library_errors` turns its
``ValueError``/``TypeError``, which name the library's argument, into a ``ConfigError`` naming the
config field.
"""

import contextlib
import dataclasses
import difflib
import functools
import numbers
import re
from collections.abc import Callable, Collection, Iterator

import ml_collections

import input_pipeline
import lars_optax
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


def _positive_int(value) -> bool:
  return _is_int(value) and value > 0


# (field, test, what the field must be): the fields no library call checks.
_RULES: tuple[tuple[str, Callable[[object], bool], str], ...] = (
  ("batch_size", _positive_int, "a positive integer"),
  ("grad_accum_steps", _positive_int, "a positive integer"),
  ("eval_batch_size", lambda v: v is None or _positive_int(v), "None or a positive integer"),
  ("base_batch_size", _positive_int, "a positive integer"),
  (
    "label_smoothing",
    lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 <= v < 1,
    "in [0, 1)",
  ),
  ("seed", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
  ("num_train_steps", lambda v: _is_int(v) and (v == -1 or v > 0), "-1 or a positive integer"),
  ("log_every_steps", _positive_int, "a positive integer"),
  ("eval_every_steps", lambda v: _is_int(v) and v >= -1, "-1, 0 or a positive integer"),
  ("steps_per_eval", lambda v: _is_int(v) and v >= -1, "-1, 0 or a positive integer"),
  ("diagnostics_every_steps", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
  ("checkpoint_every_steps", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
  ("keep_checkpoints", _positive_int, "a positive integer"),
  ("max_consecutive_skips", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
  ("shuffle_buffer_size", _positive_int, "a positive integer"),
  ("prefetch_batches", _positive_int, "a positive integer"),
  ("preemption_sync_every_steps", _positive_int, "a positive integer"),
)

# (field, registry): the field must name an entry of the registry.
_NAMES = (
  ("model", models.MODELS),
  ("optimizer", optimizers.OPTIMIZERS),
  ("lr_scaling", optimizers.LR_SCALING),
  ("lars_mask", optimizers.LARS_MASKS),
  ("parallelism", steps.PARALLELISM),
)

# The config field behind each argument name that lars_optax's error messages use.
_LIBRARY_ARGUMENTS = {
  "learning_rate": "learning_rate",
  "base_learning_rate": "learning_rate",
  "peak_value": "learning_rate",
  "momentum": "momentum",
  "nesterov": "nesterov",
  "weight_decay": "weight_decay",
  "trust_coefficient": "trust_coefficient",
  "eps": "lars_eps",
  "trust_clip": "optimizer",
  "end_value": "end_learning_rate",
  "power": "lr_decay_power",
  "batch_size": "batch_size",
  "base_batch_size": "base_batch_size",
  "num_epochs": "num_epochs",
  "total_steps": "num_epochs",
  "warmup_epochs": "warmup_epochs",
  "warmup_steps": "warmup_epochs",
}
_ARGUMENT_PATTERN = re.compile(r"\b(" + "|".join(sorted(_LIBRARY_ARGUMENTS, key=len, reverse=True)) + r")\b")


def did_you_mean(value: object, choices: Collection[str]) -> str:
  """`` Did you mean 'x'?`` for the choice closest to ``value``, or an empty string."""
  close = difflib.get_close_matches(str(value), [str(choice) for choice in choices], n=1, cutoff=0.6)
  return f" Did you mean {close[0]!r}?" if close else ""


@contextlib.contextmanager
def library_errors(config: ml_collections.ConfigDict) -> Iterator[None]:
  """Turns a lars_optax ``ValueError``/``TypeError`` about one of its arguments into a `ConfigError`.

  The message names the config field that fed the argument, e.g. ``config.momentum=1.5: momentum must
  be in [0, 1), got 1.5.``; an error naming no known argument is a bug and propagates unchanged.
  """
  try:
    yield
  except ConfigError:
    raise
  except (ValueError, TypeError) as error:
    match = _ARGUMENT_PATTERN.search(str(error))
    if match is None:
      raise
    field = _LIBRARY_ARGUMENTS[match.group(1)]
    raise ConfigError(f"config.{field}={config[field]!r}: {error}") from None


def check_optimizer(config: ml_collections.ConfigDict) -> None:
  """Lets `lars_optax.lars` validate the optimizer hyperparameters of ``config``.

  The four optimizers of `training.optimizers` give ``momentum``, ``nesterov``, ``weight_decay``,
  ``trust_coefficient`` and ``lars_eps`` the same meaning, so LARS's own checks apply to all of them.

  Raises:
    ConfigError: naming the first field `lars_optax.lars` rejects.
  """
  with library_errors(config):
    lars_optax.lars(
      config.learning_rate,
      momentum=config.momentum,
      nesterov=config.nesterov,
      weight_decay=config.weight_decay,
      trust_coefficient=config.trust_coefficient,
      eps=config.lars_eps,
      trust_clip=config.optimizer == "larc",
    )


def _dataset_info(config: ml_collections.ConfigDict) -> input_pipeline.DatasetInfo:
  """``config.dataset``'s description; an unknown, unprepared or mis-sized data set is a user error."""
  try:
    return input_pipeline.get_dataset_info(
      config.dataset, data_dir=config.data_dir, image_size=config.image_size, augmentation=config.augmentation
    )
  except FileNotFoundError as error:  # tfds_data.DatasetNotPreparedError: says how to prepare it.
    raise ConfigError(f"config.dataset={config.dataset!r}: {error}") from None
  except (ValueError, TypeError) as error:
    known = sorted(input_pipeline.ARRAY_DATASETS)
    fields = f"config.dataset={config.dataset!r}, config.image_size={config.image_size!r}"
    raise ConfigError(
      f"{fields}: {error} In-memory data sets: {known}; any other name is read with TFDS from "
      f"config.data_dir.{did_you_mean(config.dataset, known)}"
    ) from None


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
    ConfigError: naming the first field that is missing, of the wrong kind, unknown, or inconsistent
      with the device count, before anything is compiled.
  """
  for field in _REQUIRED:
    if config[field] is None:
      raise ConfigError(
        f"config.{field} is not set: give --config.{field}=... or a config.recipe that provides it."
      )
  for field, registry in _NAMES:
    if config[field] not in registry:
      raise ConfigError(
        f"config.{field} must be one of {sorted(registry)}, got {config[field]!r}."
        + did_you_mean(config[field], registry)
      )
  for field, test, requirement in _RULES:
    if not test(config[field]):
      raise ConfigError(f"config.{field} must be {requirement}, got {config[field]!r}.")
  check_optimizer(config)
  derived = sorted(set(config.model_kwargs) & set(_DERIVED_MODEL_FIELDS))
  if derived:
    raise ConfigError(
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
  shards = num_devices * config.grad_accum_steps
  if config.batch_size % shards:
    raise ConfigError(
      f"config.batch_size={config.batch_size} must be divisible by the device count times "
      f"config.grad_accum_steps ({num_devices} x {config.grad_accum_steps} = {shards}), so that "
      "every device gets the same micro-batch."
    )
  if config.eval_batch_size is not None and config.eval_batch_size % num_devices:
    raise ConfigError(
      f"config.eval_batch_size={config.eval_batch_size} must be divisible by the device count "
      f"({num_devices})."
    )
  info = _dataset_info(config)
  if config.batch_size > info.num_train:
    raise ConfigError(
      f"config.batch_size={config.batch_size} is larger than the training split of "
      f"{config.dataset!r} ({info.num_train} examples)."
    )
  return info
