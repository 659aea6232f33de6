"""`train_and_evaluate`: the training loop of train.py, importable by tests and notebooks."""

import itertools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import input_pipeline
import lars_optax
from training import checkpoints, config_checks, metrics_log, plan, preemption, report, run_config
from training import steps as steps_lib
from training.errors import TrainingError


class _TrainMetrics:
  """The steps' metrics since the last log: the non-finite guard and the logged means.

  `add` keeps a step's metrics on the device (nothing waits for the step); `check`, called before
  anything is logged, evaluated or saved, fetches them and stops the run on non-finite steps: without
  skipping, the first one; with skipping, more than ``max_consecutive`` in a row. The flags are
  replicated, so every process stops at the same check.
  """

  def __init__(self, step: int, batch_size: int, *, skip: bool, max_consecutive: int):
    self._batch_size, self._skip, self._max_consecutive = batch_size, skip, max_consecutive
    self._pending: list[tuple[int, steps_lib.Metrics]] = []  # (step, device metrics), not yet checked.
    self._history: list[dict] = []  # Checked host metrics since the last flush.
    self._consecutive = 0
    self._start_step, self._start_time = step, time.perf_counter()

  def add(self, step: int, metrics: steps_lib.Metrics) -> None:
    """Records the metrics of the step that completed ``step`` optimizer steps."""
    self._pending.append((step, metrics))

  def check(self) -> None:
    """Raises `TrainingError` if the steps since the last check went wrong (see the class docstring)."""
    pending, self._pending = jax.device_get(self._pending), []
    for step, metrics in pending:
      self._history.append(metrics)
      if metrics["finite"]:
        self._consecutive = 0
        continue
      self._consecutive += 1
      if not self._skip:
        raise TrainingError(
          f"Training diverged at step {step}: the loss ({float(metrics['loss'])}) or the new parameters "
          "or optimizer state are not finite. Stopped without saving it (the checkpoints on disk are "
          "finite). Lower the learning rate, or skip such steps with --config.skip_nonfinite_steps=true."
        )
      if self._consecutive > self._max_consecutive:
        raise TrainingError(
          f"{self._consecutive} consecutive non-finite steps were skipped (steps "
          f"{step - self._consecutive + 1} to {step}), more than config.max_consecutive_skips="
          f"{self._max_consecutive}: the run has diverged. Stopped without saving (the checkpoints on "
          "disk are finite)."
        )

  def flush(self, step: int, state: steps_lib.TrainState) -> dict[str, float]:
    """Means of loss, accuracy and gradient norm, the last LR, throughput; starts a new window."""
    self.check()
    history, self._history = self._history, []
    now = time.perf_counter()
    steps_per_sec = (step - self._start_step) / (now - self._start_time)
    self._start_step, self._start_time = step, now
    applied = [m for m in history if m["finite"]]  # Skipped steps do not enter the means.

    def mean(key: str) -> float:
      return float(np.mean([m[key] for m in applied])) if applied else float("nan")

    return {
      "train/loss": mean("loss"),
      "train/accuracy": mean("accuracy"),
      "train/grad_norm": mean("grad_norm"),
      "train/lr": float(history[-1]["lr"]),
      "train/skipped_steps": int(jax.device_get(state.skipped_steps)),
      "train/skipped_steps_in_window": len(history) - len(applied),
      "train/steps_per_sec": steps_per_sec,
      "train/images_per_sec": steps_per_sec * self._batch_size,
    }


class _TrainingRun:
  """The steps of one run between its start (or resume) and its end (or preemption)."""

  def __init__(self, config, run, parallel, log, checkpointer):
    self.config, self.run, self.parallel = config, run, parallel
    self.log, self.checkpointer = log, checkpointer
    self._data_args = dict(
      image_size=config.image_size,
      dtype="bfloat16" if config.half_precision else "float32",
      data_dir=config.data_dir,
      cache=config.cache,
      augmentation=config.augmentation,
    )
    self._eval_data = input_pipeline.eval_dataset(  # Opened once: a cached split is read from disk once.
      config.dataset,
      global_batch_size=run.eval_batch_size,
      crop_padding=config.crop_padding,
      **self._data_args,
    )

  def _placed(self, batches):
    """``batches`` placed on the devices, ``config.prefetch_batches`` ahead of the step."""
    return input_pipeline.prefetch_batches(batches, self.parallel.place_batch, self.config.prefetch_batches)

  def evaluate(self, state: steps_lib.TrainState) -> dict[str, float]:
    """Top-1, top-5 and loss over the evaluation batches, counting only unmasked examples."""
    batches = itertools.islice(self._eval_data, self.run.num_eval_steps)
    totals = None
    for batch in self._placed(batches):
      sums = self.parallel.eval_step(state, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals.pop("count"))
    return {f"eval/{key}": float(value) / count for key, value in totals.items()}

  def _record(self, done: int, state, metrics: _TrainMetrics, progress: report.Progress) -> dict[str, float]:
    """Everything due at step ``done``: training metrics, trust ratios, evaluation."""
    config, run, record = self.config, self.run, {}
    last = done == run.num_train_steps
    if done % config.log_every_steps == 0 or last:
      record.update(metrics.flush(done, state))
      progress.log(done, record)
    if config.diagnostics_every_steps and done % config.diagnostics_every_steps == 0:
      found = lars_optax.find_diagnostics(state.opt_state)  # LARS: per-layer trust ratios and norms.
      if len(found) == 1:
        flat = jax.device_get(lars_optax.flatten_diagnostics(next(iter(found.values()))))
        record.update({key: float(value) for key, value in flat.items()})
    eval_due = run.eval_every_steps and done % run.eval_every_steps == 0
    if run.num_eval_steps and (eval_due or last):
      metrics.check()
      record.update(self.evaluate(state))
      progress.write(report.eval_line(done, record))
    return record

  def train(self, state: steps_lib.TrainState, start_step: int) -> tuple[steps_lib.TrainState, dict]:
    """Trains from ``start_step``; returns the state and the latest value of every logged metric."""
    config, run = self.config, self.run
    batches = input_pipeline.train_iterator(
      config.dataset,
      global_batch_size=config.batch_size,
      seed=config.seed,
      start_step=start_step,
      shuffle_buffer_size=config.shuffle_buffer_size,
      **self._data_args,
    )
    batches = self._placed(batches)
    skip, max_consecutive = config.skip_nonfinite_steps, config.max_consecutive_skips
    metrics = _TrainMetrics(start_step, config.batch_size, skip=skip, max_consecutive=max_consecutive)
    latest = {"preempted": False}
    progress = report.Progress(
      total=run.num_train_steps, initial=start_step, progress_bar=config.progress_bar
    )
    sync_every = config.preemption_sync_every_steps
    with progress, preemption.PreemptionHandler(sync_every_steps=sync_every) as preempt:
      for step in range(start_step, run.num_train_steps):
        if preempt.should_stop(step):  # Also before the first step: a signal during start-up.
          latest["preempted"] = True
          break
        state, step_metrics = self.parallel.train_step(state, next(batches))
        done = step + 1
        metrics.add(done, step_metrics)
        progress.update()
        record = self._record(done, state, metrics, progress)
        if record:
          self.log.write(done, record)
          latest.update(record)
        if self.checkpointer.is_due(done):
          metrics.check()  # Nothing non-finite is saved.
        self.checkpointer.save(done, state)
    metrics.check()  # Before the final save.
    return state, latest


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, allow_config_change: bool = False
) -> dict:
  """Trains ``config`` in ``workdir`` (resuming from its latest good checkpoint) and evaluates.

  Args:
    config: a config from configs/ (checked before anything is compiled).
    workdir: receives config.json, metrics.jsonl, TensorBoard events and checkpoints/.
    allow_config_change: resume even if the config differs from the recorded one in a field that
      alters the training trajectory (see `training.run_config`).

  Raises:
    ConfigError: an invalid config, or a resume with a changed config.
    TrainingError: non-finite training, or no usable checkpoint to resume from.

  Returns:
    A summary: final step, the last evaluation's and training window's metrics, skipped steps,
    whether the run stopped on SIGTERM, wall time and the expected top-1 of the config.
  """
  start_time = time.perf_counter()
  info = config_checks.validate_config(config, num_devices=jax.device_count())
  run = plan.make_plan(config, info)
  report.print0(report.start_block(config, run, workdir))
  schedule = {"total_steps": run.schedule_steps, "warmup_steps": run.warmup_steps}
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  resuming = checkpoints.has_checkpoints(checkpoint_dir)
  run_config.check(config, workdir, resuming=resuming, allow_change=allow_config_change, schedule=schedule)

  step_config = steps_lib.StepConfig(
    model=run.model,
    tx=run.tx,
    learning_rate_fn=run.schedule,
    num_classes=info.num_classes,
    label_smoothing=config.label_smoothing,
    grad_accum_steps=config.grad_accum_steps,
    skip_nonfinite=config.skip_nonfinite_steps,
    seed=config.seed,
  )
  parallel = steps_lib.PARALLELISM[config.parallelism](step_config, sync_batch_norm=config.sync_batch_norm)
  checkpointer = checkpoints.Checkpointer(
    checkpoint_dir, every_steps=config.checkpoint_every_steps, keep=config.keep_checkpoints
  )
  initial = steps_lib.create_train_state(run.model, run.tx, seed=config.seed, input_shape=info.image_shape)
  host_state = checkpointer.restore_latest(jax.device_get(initial))
  start_step = int(host_state.step)
  run_config.record(config, workdir, schedule)  # Only once the restore succeeded.
  if start_step >= run.num_train_steps:  # Finished already: no evaluation, no new events file.
    checkpointer.close()
    report.print0(
      f"already complete: step {start_step} of {run.num_train_steps} in {workdir}; nothing trained, the "
      "summary below is the one recorded in metrics.jsonl"
    )
    latest = {"preempted": False}
    for record in metrics_log.read_metrics(os.path.join(workdir, metrics_log.METRICS_FILE)):
      latest.update(record)
    return _summary(start_step, host_state, latest, None, run, workdir)  # The recorded metrics.
  if start_step:
    report.print0(f"resuming from the checkpoint at step {start_step}")
  log = metrics_log.MetricsLog(workdir, start_step=start_step)
  loop = _TrainingRun(config, run, parallel, log, checkpointer)

  try:
    state, latest = loop.train(parallel.place_state(host_state), start_step)
    final_step = int(jax.device_get(state.step))
    if final_step > start_step:  # Else stopped before the first step: nothing new to save.
      checkpointer.save(final_step, state, force=True)
  finally:  # Also on a TrainingError: the (finite) checkpoints being written are completed.
    checkpointer.close()
    log.close()
  return _summary(final_step, state, latest, start_time, run, workdir)


def _summary(
  step: int, state, latest: dict, start_time: float | None, run: plan.TrainingPlan, workdir
) -> dict:
  """The summary `train_and_evaluate` returns (and prints, rounded)."""
  summary = {
    "step": step,
    **{key: value for key, value in latest.items() if key.startswith(("train/", "eval/"))},
    "skipped_steps": int(jax.device_get(state.skipped_steps)),
    "preempted": latest["preempted"],
    "wall_time_s": None if start_time is None else time.perf_counter() - start_time,
    "expected_top1": run.expected_top1,
  }
  report.print0(report.summary_block(summary, workdir))
  return summary
