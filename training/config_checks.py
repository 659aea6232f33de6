"""Config checks at start, before anything compiles: ranges here (int32 counts, float32 values); what
`lars_optax` and the models take, by them (`library_errors` names the field behind the argument)."""

import contextlib
import difflib
import numbers
from collections.abc import Iterator

import ml_collections
import numpy as np

import input_pipeline
import models
from training import optimizers, steps
from training.errors import ConfigError

INT32_MAX = _I32 = int(np.iinfo(np.int32).max)
_F32 = float(np.finfo(np.float32).max)

# field: (lowest, highest) integer; a value in `_SENTINELS` is also allowed.
_INT_RANGES = {
  **dict.fromkeys(("batch_size", "grad_accum_steps", "base_batch_size", "eval_batch_size"), (1, _I32)),
  **dict.fromkeys(("log_every_steps", "keep_checkpoints", "num_train_steps", "prefetch_batches"), (1, _I32)),
  "preemption_sync_every_steps": (1, _I32),
  **dict.fromkeys(("diagnostics_every_steps", "checkpoint_every_steps"), (0, _I32)),
  **dict.fromkeys(("steps_per_eval", "max_consecutive_skips", "seed", "crop_padding"), (0, _I32)),
  "shuffle_buffer_size": (1, _I32),
  "eval_every_steps": (-_I32, _I32),  # -n: every n epochs.
}
_SENTINELS = {"eval_batch_size": None, "num_train_steps": -1, "steps_per_eval": -1}

# field: (lowest, highest) real number, highest excluded; all must be given (not None).
_FLOAT_RANGES = {
  **dict.fromkeys(("learning_rate", "end_learning_rate", "weight_decay", "trust_coefficient"), (0, _F32)),
  **dict.fromkeys(("lars_eps", "lr_decay_power", "warmup_epochs", "num_epochs"), (0, _F32)),
  **dict.fromkeys(("momentum", "label_smoothing"), (0, 1)),
}

# field: the names it may take.
_NAMES = {"model": models.MODELS, "optimizer": optimizers.OPTIMIZERS, "lr_scaling": optimizers.LR_SCALING}
_NAMES |= {"lars_mask": optimizers.MASKS, "weight_decay_mask": {None: None, **optimizers.MASKS}}
_NAMES |= {"parallelism": steps.PARALLELISM}

# The config field behind each `lars_optax` argument (an error's ``argument``) not named as the field.
_FIELD_OF_ARGUMENT = {"peak_value": "learning_rate", "base_learning_rate": "learning_rate", "eps": "lars_eps"}
_FIELD_OF_ARGUMENT |= {"end_value": "end_learning_rate", "power": "lr_decay_power", "mask": "lars_mask"}
_FIELD_OF_ARGUMENT |= {"total_steps": "num_epochs", "warmup_steps": "warmup_epochs"}


@contextlib.contextmanager
def library_errors(config: ml_collections.ConfigDict, note: str = "") -> Iterator[None]:
  """A library's or model's ValueError/TypeError as a `ConfigError` naming the field of its ``argument``."""
  try:
    yield
  except (ValueError, TypeError) as error:
    argument = getattr(error, "argument", None)
    if argument in model_kwargs(config):
      field, value = f"model_kwargs.{argument}", config.model_kwargs[argument]
    elif (field := _FIELD_OF_ARGUMENT.get(argument, argument)) in config:
      value = config[field]
    else:
      raise
    raise ConfigError(f"config.{field}={value!r}: {error}{note}") from None


def _check_ranges(config: ml_collections.ConfigDict) -> None:
  for field, (low, high) in _INT_RANGES.items():
    value = config[field]
    if field in _SENTINELS and value == _SENTINELS[field] and not isinstance(value, bool):
      continue
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
      also = f" or {_SENTINELS[field]}" if field in _SENTINELS else ""
      raise ConfigError(f"config.{field} must be an integer in [{low}, {high}]{also}, got {value!r}.")
  for field, (low, high) in _FLOAT_RANGES.items():
    value = config[field]
    if value is None:
      raise ConfigError(f"config.{field} is not set for this batch size: give --config.{field}=...")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value < high:
      raise ConfigError(f"config.{field} must be a number in [{low}, {high:g}), got {value!r}.")


def model_kwargs(config: ml_collections.ConfigDict) -> dict:
  """The set (not None) entries of ``config.model_kwargs``, as keyword arguments of the model."""
  return {key: value for key, value in config.model_kwargs.items() if value is not None}


def _check_model_kwargs(config: ml_collections.ConfigDict) -> None:
  derived = sorted(set(config.model_kwargs) & set(models.registry.DERIVED_FIELDS))
  if derived:
    raise ConfigError(f"config.model_kwargs must not set {derived}: they follow from the data and devices.")
  allowed = models.registry.settable_fields(config.model)
  unknown = sorted(set(model_kwargs(config)) - set(allowed))
  if unknown:
    raise ConfigError(
      f"config.model_kwargs.{unknown[0]}: model {config.model!r} has no field {unknown[0]!r}; the "
      f"fields model_kwargs may set are {allowed}."
    )


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int) -> input_pipeline.DatasetInfo:
  """Checks ``config`` for ``num_devices`` devices (all processes); returns its data set's description."""
  for field, registry in _NAMES.items():
    if config[field] not in registry:
      names = sorted(name for name in registry if name is not None)
      close = difflib.get_close_matches(str(config[field]), names, n=1)
      raise ConfigError(
        f"config.{field} must be one of {names}{' or None' if None in registry else ''}, got "
        f"{config[field]!r}.{f' Did you mean {close[0]!r}?' if close else ''}"
      )
  _check_ranges(config)
  _check_model_kwargs(config)
  batch, eval_batch, k = config.batch_size, config.eval_batch_size, config.grad_accum_steps
  if batch % (num_devices * k):
    raise ConfigError(
      f"config.batch_size={batch} must divide into {num_devices} devices x {k} micro-batches "
      "(config.grad_accum_steps)."
    )
  if eval_batch is not None and eval_batch % num_devices:
    raise ConfigError(f"config.eval_batch_size={eval_batch} must be divisible by the {num_devices} devices.")
  fields = ("data_dir", "image_size", "augmentation")
  with library_errors(config):  # `input_pipeline.InputError.argument` is the field's name.
    info = input_pipeline.get_dataset_info(config.dataset, **{field: config[field] for field in fields})
  if batch > info.num_train:
    raise ConfigError(f"config.batch_size={batch} is larger than the training split ({info.num_train}).")
  return info
