"""Tables (Markdown), plots (PNG) and raw numbers (JSON) of the large-batch study.

A `Cell` is one grid of the study: a model, an optimizer, a global batch size and an epoch budget, trained
for every (seed, peak learning rate). Its learning rate is chosen on the validation split (highest mean
over seeds) and its test accuracy is reported at that choice only.
"""

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed.
import matplotlib.pyplot as plt
import numpy as np

from benchmarks.study_engine import GridRuns

SWEEP, LONGER = "sweep", "longer"


@dataclasses.dataclass
class Cell:
  """One grid of runs and its outcome.

  Attributes:
    model: a name in ``models.MODELS``.
    optimizer: a name in ``training.optimizers.OPTIMIZERS``.
    batch_size: B.
    num_epochs: the epoch budget E.
    kind: ``"sweep"`` (the batch-size sweep) or ``"longer"`` (the train-longer runs).
    steps_per_epoch: ⌊N / B⌋.
    seeds: the S seeds.
    peak_learning_rates: the L values of γ_0 tried (after the batch-size scaling rule).
    runs: what training produced; None when the wall-clock budget ran out first.
  """

  model: str
  optimizer: str
  batch_size: int
  num_epochs: int
  kind: str
  steps_per_epoch: int
  seeds: list[int]
  peak_learning_rates: list[float]
  runs: GridRuns | None = None

  @property
  def choice(self) -> int:
    """Index of the learning rate with the best mean validation accuracy (the smaller one on ties)."""
    return int(np.argmax(self.runs.val_accuracy.mean(axis=0)))

  @property
  def at_edge(self) -> bool:
    """Whether the chosen learning rate is the smallest or the largest of a grid of two or more."""
    return len(self.peak_learning_rates) > 1 and self.choice in (0, len(self.peak_learning_rates) - 1)

  @property
  def chosen_learning_rate(self) -> float:
    return self.peak_learning_rates[self.choice]

  @property
  def test_accuracy(self) -> np.ndarray:
    """``(S,)`` test accuracies of the seeds at the chosen learning rate."""
    return self.runs.test_accuracy[:, self.choice]

  @property
  def diverged(self) -> np.ndarray:
    """``(L,)`` number of seeds whose training loss ended non-finite, per learning rate."""
    return np.sum(~np.isfinite(self.runs.train_loss[..., -1]), axis=0)

  def to_json(self) -> dict[str, Any]:
    """The cell with its raw numbers (LARS diagnostics at the chosen learning rate only)."""
    out = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
    out.pop("runs")
    if self.runs is None:
      return out | {"skipped": True}
    runs = self.runs
    return out | {
      "val_accuracy": runs.val_accuracy.tolist(),
      "test_accuracy": runs.test_accuracy.tolist(),
      "train_loss": np.where(np.isfinite(runs.train_loss), runs.train_loss, None).tolist(),
      "diagnostics_at_choice": {
        field: {layer: v[:, self.choice].tolist() for layer, v in values.items()}
        for field, values in runs.diagnostics.items()
      },
      "chosen_learning_rate": self.chosen_learning_rate,
      "at_edge": self.at_edge,
      "seconds": runs.seconds,
    }


def _percent(values: np.ndarray) -> str:
  return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def _lr(value: float) -> str:
  return f"{value:.3g}"


def _done(cells: Sequence[Cell], kind: str) -> list[Cell]:
  return [c for c in cells if c.kind == kind and c.runs is not None]


def _summary_entry(cell: Cell) -> str:
  edge = " †" if cell.at_edge else ""
  best = 100 * np.max(cell.test_accuracy)
  return f"{_percent(cell.test_accuracy)} [{best:.1f}] (γ₀ {_lr(cell.chosen_learning_rate)}{edge})"


def summary_table(cells: Sequence[Cell]) -> str:
  """Batch sizes by (model, optimizer): test accuracy % mean ± std [best seed] (chosen γ_0)."""
  sweep = _done(cells, SWEEP)
  columns = list(dict.fromkeys((c.model, c.optimizer) for c in sweep))
  batches = sorted({c.batch_size for c in sweep})
  by_key = {(c.model, c.optimizer, c.batch_size): c for c in sweep}
  lines = [
    "| batch | steps/epoch | " + " | ".join(f"{m} {o}" for m, o in columns) + " |",
    "|---:|---:|" + "---|" * len(columns),
  ]
  for batch in batches:
    row = [by_key.get((m, o, batch)) for m, o in columns]
    steps = next(c.steps_per_epoch for c in row if c is not None)
    entries = [_summary_entry(c) if c is not None else "skipped" for c in row]
    lines.append(f"| {batch} | {steps} | " + " | ".join(entries) + " |")
  return "\n".join(lines)


def longer_table(cells: Sequence[Cell]) -> str:
  """The train-longer runs beside the sweep's cell with the same model, optimizer and batch."""
  sweep = {(c.model, c.optimizer, c.batch_size): c for c in _done(cells, SWEEP)}
  lines = ["| model | optimizer | batch | epochs | test acc. % | γ₀ |", "|---|---|---:|---:|---|---|"]
  for longer in _done(cells, LONGER):
    for cell in (sweep.get((longer.model, longer.optimizer, longer.batch_size)), longer):
      if cell is not None:
        edge = " †" if cell.at_edge else ""
        lines.append(
          f"| {cell.model} | {cell.optimizer} | {cell.batch_size} | {cell.num_epochs} | "
          f"{_percent(cell.test_accuracy)} | {_lr(cell.chosen_learning_rate)}{edge} |"
        )
  return "\n".join(lines)


def trust_ratio_table(cells: Sequence[Cell]) -> str:
  """Per-layer λ (median over seeds, chosen γ_0) after the first and the last epoch, LARS-type cells."""
  with_ratios = [c for c in _done(cells, SWEEP) if c.runs.trust_ratios]
  if not with_ratios:
    return ""
  lines = [
    "| model | optimizer | batch | layer | λ after epoch 1 | λ after the last epoch |",
    "|---|---|---:|---|---:|---:|",
  ]
  for cell in with_ratios:
    for layer, ratios in cell.runs.trust_ratios.items():
      at_choice = ratios[:, cell.choice]
      first, last = np.median(at_choice[:, 0]), np.median(at_choice[:, -1])
      lines.append(
        f"| {cell.model} | {cell.optimizer} | {cell.batch_size} | {layer} | {first:.3g} | {last:.3g} |"
      )
  return "\n".join(lines)


def detail_table(cells: Sequence[Cell]) -> str:
  """Every cell: mean validation accuracy per γ_0, divergences, the choice and its test accuracy."""
  lines = [
    "| model | optimizer | batch | epochs | γ₀: mean val. acc. % (diverged seeds) | chosen γ₀ "
    "| test acc. % | best seed % | time (s) |",
    "|---|---|---:|---:|---|---:|---|---:|---:|",
  ]
  for cell in cells:
    head = f"| {cell.model} | {cell.optimizer} | {cell.batch_size} | {cell.num_epochs} |"
    if cell.runs is None:
      lines.append(head + " skipped (wall-clock budget) | | | | |")
      continue
    val = 100 * cell.runs.val_accuracy.mean(axis=0)
    grid = ", ".join(
      f"{_lr(lr)}: {v:.1f}" + (f" ({d})" if d else "")
      for lr, v, d in zip(cell.peak_learning_rates, val, cell.diverged, strict=True)
    )
    edge = " †" if cell.at_edge else ""
    lines.append(
      f"{head} {grid} | {_lr(cell.chosen_learning_rate)}{edge} | {_percent(cell.test_accuracy)} | "
      f"{100 * np.max(cell.test_accuracy):.1f} | {cell.runs.seconds:.0f} |"
    )
  return "\n".join(lines)


def markdown(title: str, setup: str, cells: Sequence[Cell]) -> str:
  """The whole report of one data set."""
  parts = [
    f"## {title}",
    setup,
    "### Test accuracy at the γ₀ chosen on validation",
    "Mean ± std over seeds [best seed] (chosen peak LR γ₀). † marks a choice at an edge of the LR grid "
    "(the grid may be too narrow there).",
    summary_table(cells),
  ]
  if _done(cells, LONGER):
    parts += ["### Train longer at the largest batch (the paper's Table 5 analogue)", longer_table(cells)]
  ratios = trust_ratio_table(cells)
  if ratios:
    parts += ["### Per-layer trust ratios λ = η‖w‖/(‖g‖ + β‖w‖) of the chosen runs", ratios]
  parts += ["### Every grid", detail_table(cells)]
  return "\n\n".join(parts) + "\n"


def plot_accuracy_vs_batch(cells: Sequence[Cell], path: Path, title: str) -> None:
  """One panel per model: test accuracy (mean ± std over seeds) against B, one line per optimizer."""
  sweep = _done(cells, SWEEP)
  models = list(dict.fromkeys(c.model for c in sweep))
  fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False, sharey=True)
  for ax, model in zip(axes[0], models, strict=True):
    for optimizer in dict.fromkeys(c.optimizer for c in sweep if c.model == model):
      line = sorted((c for c in sweep if (c.model, c.optimizer) == (model, optimizer)), key=_batch)
      means = [100 * c.test_accuracy.mean() for c in line]
      stds = [100 * c.test_accuracy.std() for c in line]
      drawn = ax.errorbar([c.batch_size for c in line], means, stds, marker="o", capsize=3, label=optimizer)
      for longer in _done(cells, LONGER):
        if (longer.model, longer.optimizer) == (model, optimizer):
          ax.errorbar(
            longer.batch_size,
            100 * longer.test_accuracy.mean(),
            100 * longer.test_accuracy.std(),
            marker="*",
            markersize=12,
            color=drawn[0].get_color(),
            label=f"{optimizer}, {longer.num_epochs} epochs",
          )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch size B")
    ax.set_title(model)
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0][0].set_ylabel("test accuracy % (LR chosen on validation)")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_accuracy_vs_lr(cells: Sequence[Cell], path: Path, title: str) -> None:
  """One panel per (model, optimizer): validation accuracy against γ_0, one line per batch size."""
  sweep = _done(cells, SWEEP)
  keys = list(dict.fromkeys((c.model, c.optimizer) for c in sweep))
  columns = len({optimizer for _, optimizer in keys})
  rows = math.ceil(len(keys) / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
  for ax, (model, optimizer) in zip(axes.flat, keys, strict=False):
    for cell in sorted((c for c in sweep if (c.model, c.optimizer) == (model, optimizer)), key=_batch):
      val = 100 * cell.runs.val_accuracy
      ax.errorbar(
        cell.peak_learning_rates, val.mean(0), val.std(0), marker="o", capsize=3, label=f"B={cell.batch_size}"
      )
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate γ₀")
    ax.set_ylabel("validation accuracy %")
    ax.set_title(f"{model}, {optimizer}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  for ax in list(axes.flat)[len(keys) :]:
    ax.set_visible(False)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _batch(cell: Cell) -> int:
  return cell.batch_size


def write(
  output_dir: Path, name: str, title: str, setup: str, cells: Sequence[Cell], metadata: dict[str, Any]
) -> dict[str, Path]:
  """Writes ``<name>.md``, ``<name>.json`` and the two plots to ``output_dir``; returns their paths."""
  output_dir.mkdir(parents=True, exist_ok=True)
  paths = {
    "markdown": output_dir / f"{name}.md",
    "json": output_dir / f"{name}.json",
    "accuracy_vs_batch": output_dir / f"{name}_accuracy_vs_batch.png",
    "accuracy_vs_lr": output_dir / f"{name}_accuracy_vs_lr.png",
  }
  paths["markdown"].write_text(markdown(title, setup, cells))
  record = metadata | {"cells": [c.to_json() for c in cells]}
  paths["json"].write_text(json.dumps(record, indent=1) + "\n")
  if _done(cells, SWEEP):
    plot_accuracy_vs_batch(cells, paths["accuracy_vs_batch"], title)
    plot_accuracy_vs_lr(cells, paths["accuracy_vs_lr"], title)
  return paths
