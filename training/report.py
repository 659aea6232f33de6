"""What train.py prints on process 0: the start block, the progress of the steps and the final summary."""

import os
import sys
from collections.abc import Mapping

import jax
import tqdm

from training import plan


def print0(*lines: str) -> None:
  """Prints on process 0 only, flushed (the other processes train silently)."""
  if jax.process_index() == 0:
    print(*lines, sep="\n", flush=True)


def start_block(config, run: plan.TrainingPlan, workdir: str | os.PathLike) -> str:
  """The lines that open a run: what is trained on what, with which batch, steps and schedule, and where."""
  device, devices, k, batch = jax.devices()[0], jax.device_count(), config.grad_accum_steps, config.batch_size
  micro = f"{devices} devices x {k} micro-batches x {batch // (devices * k)} per device"
  decayed = config.weight_decay_mask or ("rank" if config.optimizer == "sgd" else config.lars_mask)
  decay, end = config.lr_decay_power, config.end_learning_rate
  adapted = "" if config.optimizer == "sgd" else f"; trust ratio on {config.lars_mask} leaves"
  scaled = "" if config.lr_scaling == "none" else f" ({config.lr_scaling} scaling)"
  every = f"every {run.eval_every_steps} steps and " if run.eval_every_steps else ""
  top1 = run.expected_top1
  evaluation = f"{run.num_eval_steps} batches of {run.eval_batch_size}, {every}at the end"
  rows = {
    "model": config.model + (" (bfloat16 activations)" if config.half_precision else ""),
    "data set": config.dataset + ("" if config.data_dir is None else f" from {config.data_dir}"),
    "optimizer": f"{config.optimizer}, momentum {config.momentum:g}, weight decay {config.weight_decay:g} "
    f"on {decayed} leaves{adapted}",
    "devices": f"{devices} x {device.device_kind} ({device.platform}), {jax.process_count()} processes, "
    + config.parallelism,
    "batch": f"global B = {batch} = {micro}",
    "steps": f"{run.num_train_steps} ({run.steps_per_epoch}/epoch)",
    "learning rate": f"γ_0 = {run.peak_learning_rate:g}{scaled}; linear warm-up over {run.warmup_steps} "
    f"steps, poly({decay:g}) decay to {end:g} at step {run.schedule_steps}",
    "evaluation": evaluation if run.num_eval_steps else "none",
    "expected": "no published figure" if top1 is None else f"{top1:g}% top-1 (full run)",
    "workdir": os.fspath(workdir),
  }
  return "\n".join(f"{name + ':':<14} {value}" for name, value in rows.items())


def _format(key: str, value) -> str:
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, int) or key == "expected_top1":
    return f"{value}{'%' if key == 'expected_top1' else ''}"
  if "accuracy" in key:
    return f"{100 * value:.2f}%"
  return f"{value:.1f} s" if key.endswith("_s") else f"{value:.4g}"


def summary_block(summary: Mapping[str, object], workdir: str | os.PathLike) -> str:
  """The final summary, rounded (``eval/accuracy: 98.61%``), without None fields, ending with the outputs."""
  lines = [f"  {key}: {_format(key, value)}" for key, value in summary.items() if value is not None]
  outputs = f"outputs: {os.fspath(workdir)} (metrics.jsonl, TensorBoard events, checkpoints/)"
  return "\n".join(["summary:", *lines, outputs])


def eval_line(step: int, record: Mapping[str, float]) -> str:
  accuracy, top5, loss = record["eval/accuracy"], record["eval/top5_accuracy"], record["eval/loss"]
  return f"step {step}: eval top-1 {100 * accuracy:.2f}%, top-5 {100 * top5:.2f}%, loss {loss:.4f}"


class Progress(tqdm.tqdm):
  """The steps on stdout (process 0): a tqdm bar on a terminal with ``progress_bar``, else one plain line
  per logging step (``step 40/110: loss 0.2143, lr 7.27, 388 img/s``): a log file holds no bar frames."""

  def __init__(self, *, total: int, initial: int, progress_bar: bool):
    self.plain = jax.process_index() == 0 and not (progress_bar and sys.stdout.isatty())
    bar = jax.process_index() == 0 and not self.plain
    super().__init__(
      total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stdout, disable=not bar
    )

  def log(self, step: int, record: Mapping[str, float]) -> None:
    """Shows a logging step's training metrics: on the bar, or as one line."""
    loss, lr, images = record["train/loss"], record["train/lr"], record["train/images_per_sec"]
    self.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.4g}", img_per_s=f"{images:.0f}")
    if self.plain:
      print(f"step {step}/{self.total}: loss {loss:.4f}, lr {lr:.4g}, {images:.0f} img/s", flush=True)

  def write(self, line: str) -> None:  # type: ignore[override]
    """Prints a line (an evaluation) on process 0 without breaking the bar."""
    if self.plain:
      print(line, flush=True)
    elif not self.disable:
      tqdm.tqdm.write(line, file=sys.stdout)
