"""The numbers a run derives from its config, its data set and its devices (printed by `training.report`)."""

import dataclasses
import math

import ml_collections

import input_pipeline
import lars_optax
from training import config_checks, optimizers, recipes
from training.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
  """Batch layout, step counts and learning rate of one run.

  Attributes:
    num_devices: devices over all processes.
    num_processes: JAX processes (hosts).
    batch_size: B, the global batch of one optimizer step.
    grad_accum_steps: k, micro-batches accumulated per step.
    per_device_micro_batch: B / (devices · k), the examples one device sees in one forward pass (the
      batch-norm batch when statistics are not synced).
    steps_per_epoch: ⌊N_train / B⌋.
    schedule_steps: T, the length of the learning-rate schedule (num_epochs · steps_per_epoch, rounded
      half up by `lars_optax.epochs_to_steps`).
    warmup_steps: W, the linear warm-up (warmup_epochs · steps_per_epoch, rounded alike).
    num_train_steps: the steps this run takes (T unless config.num_train_steps is set).
    peak_learning_rate: γ_0 after the scaling rule.
    lr_rule: how γ_0 was obtained, in words.
    eval_batch_size: the global evaluation batch.
    num_eval_steps: evaluation batches per evaluation (0: no evaluation).
    eval_every_steps: steps between evaluations (0: at the end only).
    expected_top1: the top-1 (%) the recipe's source reports for this batch size, if any.
    recipe_source: where `expected_top1` comes from.
  """

  num_devices: int
  num_processes: int
  batch_size: int
  grad_accum_steps: int
  per_device_micro_batch: int
  steps_per_epoch: int
  schedule_steps: int
  warmup_steps: int
  num_train_steps: int
  peak_learning_rate: float
  lr_rule: str
  eval_batch_size: int
  num_eval_steps: int
  eval_every_steps: int
  expected_top1: float | None
  recipe_source: str | None


def make_plan(
  config: ml_collections.ConfigDict,
  info: input_pipeline.DatasetInfo,
  recipe: recipes.Recipe | None,
  *,
  num_devices: int,
  num_processes: int,
) -> TrainingPlan:
  """Derives the `TrainingPlan` of a validated config.

  Epochs become steps through `lars_optax.epochs_to_steps` (halves round up), the one rounding of the
  project; the learning-rate schedule is also built here, so that `lars_optax` checks its
  hyperparameters before anything compiles.

  Raises:
    ConfigError: naming the field when the schedule would have no step, or `lars_optax` rejects a value.
  """
  with config_checks.library_errors(config):
    steps_per_epoch = lars_optax.steps_per_epoch(info.num_train, config.batch_size)
    schedule_steps = lars_optax.epochs_to_steps(config.num_epochs, steps_per_epoch, name="num_epochs")
    warmup_steps = lars_optax.epochs_to_steps(config.warmup_epochs, steps_per_epoch, name="warmup_epochs")
    if schedule_steps == 0:
      raise ConfigError(
        f"config.num_epochs={config.num_epochs} gives no step at {steps_per_epoch} steps per epoch "
        f"({info.num_train} examples, batch_size={config.batch_size}): give at least "
        f"{0.5 / steps_per_epoch:g} epochs."
      )
    optimizers.create_learning_rate_schedule(config, total_steps=schedule_steps, warmup_steps=warmup_steps)
    peak_learning_rate = optimizers.peak_learning_rate(config)
  num_train_steps = schedule_steps if config.num_train_steps == -1 else config.num_train_steps
  eval_batch_size = config.eval_batch_size or config.batch_size // config.grad_accum_steps
  full_eval = math.ceil(info.num_eval / eval_batch_size)
  num_eval_steps = full_eval if config.steps_per_eval == -1 else min(config.steps_per_eval, full_eval)
  eval_every_steps = steps_per_epoch if config.eval_every_steps == -1 else config.eval_every_steps
  if config.lr_scaling == "none":
    lr_rule = f"as configured, {config.optimizer}"
  else:
    lr_rule = f"{config.lr_scaling} scaling of {config.learning_rate:g} at batch {config.base_batch_size}"
  return TrainingPlan(
    num_devices=num_devices,
    num_processes=num_processes,
    batch_size=config.batch_size,
    grad_accum_steps=config.grad_accum_steps,
    per_device_micro_batch=config.batch_size // (num_devices * config.grad_accum_steps),
    steps_per_epoch=steps_per_epoch,
    schedule_steps=schedule_steps,
    warmup_steps=warmup_steps,
    num_train_steps=num_train_steps,
    peak_learning_rate=peak_learning_rate,
    lr_rule=lr_rule,
    eval_batch_size=eval_batch_size,
    num_eval_steps=num_eval_steps,
    eval_every_steps=eval_every_steps,
    expected_top1=None if recipe is None else recipe.expected_top1,
    recipe_source=None if recipe is None else recipe.source,
  )
