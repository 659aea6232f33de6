"""The numbers a run derives from its config, its data set and its devices, printed at start."""

import dataclasses
import math

import ml_collections

import input_pipeline
import lars_optax
from training import optimizers, recipes


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
    schedule_steps: T, the length of the learning-rate schedule (num_epochs · steps_per_epoch).
    warmup_steps: W, the linear warm-up (warmup_epochs · steps_per_epoch).
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

  def _describe_evaluation(self) -> str:
    if not self.num_eval_steps:
      return "evaluation: none"
    every = f"every {self.eval_every_steps} steps and " if self.eval_every_steps else ""
    return f"evaluation: {self.num_eval_steps} batches of {self.eval_batch_size}, {every}at the end"

  def describe(self) -> str:
    """A few lines for the start of a run."""
    expected = (
      f"{self.expected_top1:.1f}% top-1 ({self.recipe_source})"
      if self.expected_top1 is not None
      else "no published figure for this batch size"
    )
    return "\n".join(
      (
        f"devices: {self.num_devices} on {self.num_processes} process(es)",
        f"global batch B = {self.batch_size} = {self.num_devices} devices x "
        f"{self.grad_accum_steps} micro-batches x {self.per_device_micro_batch} per device",
        f"steps: {self.steps_per_epoch}/epoch, schedule {self.schedule_steps} "
        f"(warm-up {self.warmup_steps}), this run {self.num_train_steps}",
        f"learning rate: γ_0 = {self.peak_learning_rate:g} ({self.lr_rule})",
        self._describe_evaluation(),
        f"expected: {expected}",
      )
    )


def make_plan(
  config: ml_collections.ConfigDict,
  info: input_pipeline.DatasetInfo,
  recipe: recipes.Recipe | None,
  *,
  num_devices: int,
  num_processes: int,
) -> TrainingPlan:
  """Derives the `TrainingPlan` of a validated config."""
  steps_per_epoch = lars_optax.steps_per_epoch(info.num_train, config.batch_size)
  schedule_steps = max(1, round(config.num_epochs * steps_per_epoch))
  warmup_steps = min(schedule_steps, round(config.warmup_epochs * steps_per_epoch))
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
    peak_learning_rate=optimizers.peak_learning_rate(config),
    lr_rule=lr_rule,
    eval_batch_size=eval_batch_size,
    num_eval_steps=num_eval_steps,
    eval_every_steps=eval_every_steps,
    expected_top1=None if recipe is None else recipe.expected_top1,
    recipe_source=None if recipe is None else recipe.source,
  )
