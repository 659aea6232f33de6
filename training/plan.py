"""What a run derives from its config and data set: step counts, and its model, schedule and optimizer."""

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import optax

import input_pipeline
import lars_optax
import models
from training import config_checks, optimizers
from training.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
  """One run's step counts (printed at start) and what it trains with."""

  steps_per_epoch: int  # ⌊N_train / B⌋
  num_train_steps: int  # the steps this run takes
  schedule_steps: int  # T, the schedule's length: the run's, or the epochs' if the run is longer
  warmup_steps: int  # W
  peak_learning_rate: float  # γ_0 after the scaling rule
  eval_batch_size: int
  num_eval_steps: int  # batches per evaluation (0: none)
  eval_every_steps: int  # 0: at the end only
  expected_top1: float | None
  model: nn.Module
  schedule: optax.Schedule
  tx: optax.GradientTransformation


def _steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> tuple[int, int, int]:
  """(run, schedule, warm-up) steps; a run shorter than the epochs' schedule compresses it (and W)."""
  schedule = lars_optax.epochs_to_steps(config.num_epochs, steps_per_epoch, name="num_epochs")
  warmup = lars_optax.epochs_to_steps(config.warmup_epochs, steps_per_epoch, name="warmup_epochs")
  run = schedule if config.num_train_steps == -1 else config.num_train_steps
  if run > config_checks.INT32_MAX:  # The loop's step counter is an int32.
    raise ConfigError(f"config.num_epochs={config.num_epochs}: {run} steps overflow the int32 step counter.")
  if run < schedule:  # W·run/T, halves rounded up.
    schedule, warmup = run, (2 * warmup * run + schedule) // (2 * schedule)
  return run, schedule, warmup


def make_plan(config: ml_collections.ConfigDict, info: input_pipeline.DatasetInfo) -> TrainingPlan:
  """The `TrainingPlan` of a validated config; its model, schedule and optimizer are built here, once.

  Raises:
    ConfigError: naming the field behind a value `lars_optax` or the model rejects (a schedule of no step).
  """
  steps_per_epoch = lars_optax.steps_per_epoch(info.num_train, config.batch_size)
  with config_checks.library_errors(config, note=f" ({steps_per_epoch} steps per epoch)"):
    run, total, warmup = _steps(config, steps_per_epoch)
    schedule = optimizers.create_learning_rate_schedule(config, total_steps=total, warmup_steps=warmup)
    tx = optimizers.create_optimizer(config, schedule)
    dtype = jnp.bfloat16 if config.half_precision else jnp.float32
    kwargs = config_checks.model_kwargs(config)
    model = models.get_model(config.model, num_classes=info.num_classes, dtype=dtype, **kwargs)
  eval_batch = config.eval_batch_size or config.batch_size // config.grad_accum_steps
  full_eval = math.ceil(info.num_eval / eval_batch)
  num_evals = full_eval if config.steps_per_eval == -1 else min(config.steps_per_eval, full_eval)
  every = config.eval_every_steps
  eval_every = -every * steps_per_epoch if every < 0 else every  # -n: every n epochs.
  peak, top1 = optimizers.peak_learning_rate(config), config.expected_top1
  return TrainingPlan(
    steps_per_epoch, run, total, warmup, peak, eval_batch, num_evals, eval_every, top1, model, schedule, tx
  )
