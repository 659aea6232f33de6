"""What train.py prints on process 0: the start block, the progress of the steps and the final summary.

Progress is a tqdm bar when stdout is a terminal and ``config.progress_bar`` is set, else one plain line
per logging step (``step 40/110: loss 0.2143, lr 7.27, 388 img/s``), so that a log file holds no bar frames.
"""

import os
import sys
from collections.abc import Mapping

import jax
import ml_collections
import tqdm

from training import plan


def print0(*lines: str) -> None:
  """Prints on process 0 only, flushed (the other processes train silently)."""
  if jax.process_index() == 0:
    print(*lines, sep="\n", flush=True)


def start_block(config: ml_collections.ConfigDict, run: plan.TrainingPlan, workdir: str | os.PathLike) -> str:
  """The lines that open a run: what is trained on what, with which batch, steps and schedule, and where."""
  device = jax.devices()[0]
  decayed = config.weight_decay_mask or ("rank" if config.optimizer == "sgd" else config.lars_mask)
  adapted = "" if config.optimizer == "sgd" else f"; trust ratio on {config.lars_mask} leaves"
  every = f"every {run.eval_every_steps} steps and " if run.eval_every_steps else ""
  scaling = (
    "" if config.lr_scaling == "none" else f", {config.lr_scaling} scaling from {config.learning_rate:g}"
  )
  devices, k = jax.device_count(), config.grad_accum_steps
  micro = f"{devices} devices x {k} micro-batches x {config.batch_size // (devices * k)}"
  warmup = f"linear warm-up over {run.warmup_steps} steps, then poly({config.lr_decay_power:g})"
  rows = {
    "model": f"{config.model}{' (bfloat16 activations)' if config.half_precision else ''}",
    "data set": f"{config.dataset}{'' if config.data_dir is None else f' from {config.data_dir}'}",
    "optimizer": f"{config.optimizer}, momentum {config.momentum:g}, weight decay {config.weight_decay:g} on "
    f"{decayed} leaves{adapted}",
    "devices": f"{devices} x {device.device_kind} ({device.platform}), {jax.process_count()} "
    f"processes, {config.parallelism}",
    "batch": f"global B = {config.batch_size} = {micro} per device",
    "steps": f"{run.num_train_steps} ({run.steps_per_epoch}/epoch)",
    "learning rate": f"γ_0 = {run.peak_learning_rate:g}{scaling}; {warmup} decay to "
    f"{config.end_learning_rate:g} at step {run.schedule_steps}",
    "evaluation": f"{run.num_eval_steps} batches of {run.eval_batch_size}, {every}at the end"
    if run.num_eval_steps
    else "none",
    "expected": "no published figure" if run.expected_top1 is None else f"{run.expected_top1:g}% top-1",
    "workdir": os.fspath(workdir),
  }
  return "\n".join(f"{name + ':':<14} {value}" for name, value in rows.items())


def _format(key: str, value) -> str:
  if isinstance(value, bool | int):
    return ("yes" if value else "no") if isinstance(value, bool) else str(value)
  if "accuracy" in key or key == "expected_top1":
    return f"{value * (1 if key == 'expected_top1' else 100):.2f}%"
  return f"{value:.1f} s" if key.endswith("_s") else f"{value:,.4g}"


def summary_block(summary: Mapping[str, object], workdir: str | os.PathLike) -> str:
  """The final summary, rounded (``eval/accuracy: 98.61%``), without None fields, ending with the outputs."""
  lines = [f"  {key}: {_format(key, value)}" for key, value in summary.items() if value is not None]
  return "\n".join(
    ["summary:", *lines, f"outputs: {os.fspath(workdir)} (metrics.jsonl, TensorBoard, checkpoints/)"]
  )


def eval_line(step: int, record: Mapping[str, float]) -> str:
  return (
    f"step {step}: eval top-1 {100 * record['eval/accuracy']:.2f}%, "
    f"top-5 {100 * record['eval/top5_accuracy']:.2f}%, loss {record['eval/loss']:.4f}"
  )


class Progress:
  """The progress of the steps on stdout (process 0): a tqdm bar on a terminal, else plain lines."""

  def __init__(self, *, total: int, initial: int, progress_bar: bool):
    self._total, self._enabled = total, jax.process_index() == 0
    bar = self._enabled and progress_bar and sys.stdout.isatty()
    self._bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True) if bar else None

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc_info) -> None:
    if self._bar is not None:
      self._bar.close()

  def step(self) -> None:
    if self._bar is not None:
      self._bar.update(1)

  def log(self, step: int, record: Mapping[str, float]) -> None:
    """Shows a logging step's training metrics: on the bar, or as one line."""
    loss, lr, images = record["train/loss"], record["train/lr"], record["train/images_per_sec"]
    if self._bar is not None:
      self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.4g}", img_per_s=f"{images:.0f}")
    elif self._enabled:
      print(f"step {step}/{self._total}: loss {loss:.4f}, lr {lr:.4g}, {images:.0f} img/s", flush=True)

  def write(self, line: str) -> None:
    """Prints a line (an evaluation) without breaking the bar."""
    if self._bar is not None:
      self._bar.write(line)
    elif self._enabled:
      print(line, flush=True)
