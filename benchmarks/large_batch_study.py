"""The LARS paper's large-batch experiment at small scale: momentum SGD with linear LR scaling vs LARS.

For every model, optimizer and global batch size B, with a fixed budget of E epochs (so a larger batch
takes fewer steps), every (seed, peak learning rate γ_0) of a small grid is trained with warm-up then
poly(2) decay; γ_0 is chosen on a validation split carved from the training data, and the test accuracy of
that choice is reported (mean ± std over seeds). Then the largest batch is trained again for
``longer_factor`` × E epochs (the paper's Table 5: training longer closes most of the gap).

The paper (You, Gitman & Ginsburg 2017, LARS_NOTES §4) compares AlexNet, whose accuracy collapses at large
batch with linear scaling and warm-up (58.8% at B=512, 44.8% at 8K), with AlexNet-BN, which keeps it
much longer, and shows that LARS keeps AlexNet at 58.2% at 8K. The pairs here are small_alexnet /
small_alexnet_bn on images and conv1d / conv1d_bn on MNIST-1D.

Optimizers (``training.optimizers``, as train.py): ``sgd`` (momentum 0.9, weight decay β = 5e-4 on
kernels, γ_0 = base × B / B_0 with B_0 the smallest batch of the sweep), ``lars`` (``lars_optax.lars``
defaults: the paper's Algorithm 1, η = 0.001, β = 5e-4, biases and BN excluded), and optionally ``larc``
(η = 0.02, clipped, as apex) and ``optax_lars``. Each has its own LR grid (``--lr_grid``).

Run from the repository root:

  python -m benchmarks.large_batch_study --dataset digits --dataset mnist1d --budget_minutes 30
  python -m benchmarks.large_batch_study --quick            # about a minute: the tests' settings
  python -m benchmarks.large_batch_study --dataset cifar10 --data_dir ~/tensorflow_datasets

Outputs, per data set, in ``--output_dir`` (default benchmarks/results/): ``study_<dataset>.md`` (tables),
``study_<dataset>.json`` (every run's numbers) and two plots, ``study_<dataset>_accuracy_vs_batch.png``
and ``study_<dataset>_accuracy_vs_lr.png``.

How it stays fast: one compiled step per (model, optimizer, batch size), the learning rate a traced
argument (see benchmarks/study_engine.py); a wall-clock budget skips the grids it cannot start in time.

References:
  You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
  https://arxiv.org/abs/1708.03888 (Tables 1, 3 and 5).
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017,
  https://arxiv.org/abs/1706.02677 (linear scaling with warm-up).
  Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024,
  https://arxiv.org/abs/2011.14439
"""

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jax
import tqdm

import lars_optax
from benchmarks import study_engine, study_report
from models import get_model
from training import optimizers

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT_DIR = REPO_ROOT / "benchmarks" / "results"


@dataclasses.dataclass(frozen=True)
class OptimizerSetup:
  """How the study tunes one optimizer.

  Attributes:
    grid: base peak learning rates, at the smallest batch of the sweep.
    scaling: how γ_0 grows with B from that batch: a key of ``training.optimizers.LR_SCALING``.
    trust_coefficient: η (LARC uses apex's 0.02; the others the paper's 0.001).
  """

  grid: tuple[float, ...]
  scaling: str
  trust_coefficient: float = 0.001


OPTIMIZER_SETUPS: Mapping[str, OptimizerSetup] = MappingProxyType(
  {
    "sgd": OptimizerSetup(grid=(0.001, 0.004, 0.016, 0.064, 0.256), scaling="linear"),
    "lars": OptimizerSetup(grid=(0.25, 1.0, 4.0, 16.0), scaling="none"),
    "larc": OptimizerSetup(
      grid=(0.001, 0.004, 0.016, 0.064, 0.256), scaling="linear", trust_coefficient=0.02
    ),
    "optax_lars": OptimizerSetup(grid=(0.25, 1.0, 4.0, 16.0), scaling="none"),
  }
)


@dataclasses.dataclass(frozen=True)
class StudySettings:
  """Everything one data set's study depends on (the defaults of `DATASET_SETTINGS`).

  Attributes:
    dataset: ``"digits"``, ``"mnist1d"`` or a TFDS image-classification name.
    models: names in ``models.MODELS``, typically a no-BN / BN pair.
    optimizers: names in `OPTIMIZER_SETUPS`.
    batch_sizes: the global batch sizes B of the sweep (the smallest is B_0 of the scaling rules).
    num_epochs: the epoch budget E of the sweep.
    warmup_epochs: linear warm-up, then poly(2) decay to 0 at E.
    num_seeds: seeds 0 .. num_seeds - 1 for every learning rate.
    val_examples: examples carved from the training split to choose the learning rate.
    train_examples: training examples used (None: all that remain).
    longer_factor: the train-longer runs (largest batch) last longer_factor × E epochs; 0 skips them.
    longer_optimizers: the optimizers trained longer.
    grids: base LR grid per optimizer (default: `OPTIMIZER_SETUPS`).
    data_dir: TFDS data directory (also caches MNIST-1D).
  """

  dataset: str
  models: tuple[str, ...]
  batch_sizes: tuple[int, ...]
  num_epochs: int
  warmup_epochs: float
  val_examples: int
  optimizers: tuple[str, ...] = ("sgd", "lars")
  num_seeds: int = 3
  train_examples: int | None = None
  longer_factor: int = 2
  longer_optimizers: tuple[str, ...] = ("lars",)
  grids: Mapping[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
  data_dir: str | None = None

  def __post_init__(self):
    unknown = sorted(set(self.optimizers + self.longer_optimizers) - set(OPTIMIZER_SETUPS))
    if unknown:
      raise ValueError(f"optimizers must be in {sorted(OPTIMIZER_SETUPS)}, got {unknown}.")
    if self.num_seeds < 1 or self.num_epochs < 1 or not self.batch_sizes:
      raise ValueError(
        "num_seeds and num_epochs must be >= 1 and batch_sizes non-empty, got "
        f"{self.num_seeds}, {self.num_epochs}, {self.batch_sizes}."
      )

  def grid(self, optimizer: str) -> tuple[float, ...]:
    return tuple(self.grids.get(optimizer, OPTIMIZER_SETUPS[optimizer].grid))

  def peak_learning_rates(self, optimizer: str, batch_size: int) -> list[float]:
    """The grid of γ_0 at ``batch_size``: each base value scaled from the smallest batch."""
    scale = optimizers.LR_SCALING[OPTIMIZER_SETUPS[optimizer].scaling]
    base_batch = min(self.batch_sizes)
    return [scale(lr, batch_size, base_batch_size=base_batch) for lr in self.grid(optimizer)]


_IMAGES = dict(models=("small_alexnet", "small_alexnet_bn"))

# Sized so that digits and MNIST-1D together take under half an hour on 2 shared CPU cores: every grid
# costs (LRs × seeds × epochs × training examples) forward-backward passes, whatever the batch size.
DATASET_SETTINGS: Mapping[str, StudySettings] = MappingProxyType(
  {
    "digits": StudySettings(
      "digits", batch_sizes=(32, 128, 512), num_epochs=12, warmup_epochs=1, val_examples=288, **_IMAGES
    ),
    "mnist1d": StudySettings(
      "mnist1d",
      models=("conv1d", "conv1d_bn"),
      batch_sizes=(64, 256, 1024),
      num_epochs=8,
      warmup_epochs=1,
      val_examples=2000,
      train_examples=6144,
      grids={"sgd": (0.002, 0.008, 0.032, 0.128, 0.512)},
    ),
  }
)

# TFDS data sets of small images (cifar10, mnist, ...): larger batches, fewer epochs.
TFDS_SETTINGS = dict(batch_sizes=(128, 1024, 8192), num_epochs=10, warmup_epochs=1, val_examples=5000)

# --quick: about a minute, for tests and notebooks: the BN model of the pair only, 576 training
# examples, two batch sizes, three epochs and grids so wide that the middle value wins.
QUICK_SETTINGS = dict(
  batch_sizes=(32, 256),
  train_examples=576,
  num_epochs=3,
  warmup_epochs=1,
  grids={"sgd": (0.001, 0.05, 2.5), "lars": (0.05, 2.0, 80.0)},
)


def settings_for(dataset: str, *, quick: bool = False, **overrides: Any) -> StudySettings:
  """The default settings of ``dataset`` (`QUICK_SETTINGS` on top when ``quick``), then ``overrides``.

  Overrides that are None are ignored, so that unset command-line flags keep the defaults; ``grids``
  are merged into the default grids.
  """
  if dataset in DATASET_SETTINGS:
    settings = DATASET_SETTINGS[dataset]
  else:
    settings = StudySettings(dataset, **_IMAGES, **TFDS_SETTINGS)
  if quick:
    settings = dataclasses.replace(settings, models=settings.models[-1:], **QUICK_SETTINGS)
  overrides = {k: v for k, v in overrides.items() if v is not None}
  grids = {**settings.grids, **overrides.pop("grids", {})}
  return dataclasses.replace(settings, grids=grids, **overrides)


def plan_cells(settings: StudySettings, steps_per_epoch: Mapping[int, int]) -> list[study_report.Cell]:
  """The grids to train, in order: per model, per batch size, every optimizer; then the longer runs."""
  seeds = list(range(settings.num_seeds))

  def cell(model, optimizer, batch_size, num_epochs, kind):
    return study_report.Cell(
      model,
      optimizer,
      batch_size,
      num_epochs,
      kind,
      steps_per_epoch[batch_size],
      seeds,
      settings.peak_learning_rates(optimizer, batch_size),
    )

  cells = [
    cell(model, optimizer, batch_size, settings.num_epochs, study_report.SWEEP)
    for model in settings.models
    for batch_size in sorted(settings.batch_sizes)
    for optimizer in settings.optimizers
  ]
  if settings.longer_factor:
    epochs = settings.longer_factor * settings.num_epochs
    cells += [
      cell(model, optimizer, max(settings.batch_sizes), epochs, study_report.LONGER)
      for model in settings.models
      for optimizer in settings.longer_optimizers
    ]
  return cells


def run_study(
  settings: StudySettings,
  *,
  budget_seconds: float = float("inf"),
  runs_per_call: int | None = None,
  progress: bool = True,
) -> list[study_report.Cell]:
  """Trains every grid of ``settings``; grids that cannot start within ``budget_seconds`` are skipped.

  Returns:
    The `study_report.Cell` list of `plan_cells`, with ``runs`` filled in (None where skipped).
  """
  start = time.perf_counter()
  split = study_engine.load_split(
    settings.dataset,
    val_examples=settings.val_examples,
    train_examples=settings.train_examples,
    data_dir=settings.data_dir,
  )
  num_train = len(split.train_labels)
  cells = plan_cells(settings, {b: lars_optax.steps_per_epoch(num_train, b) for b in settings.batch_sizes})
  models = {
    name: study_engine.CompiledModel(get_model(name, num_classes=split.num_classes), split.train_images[:1])
    for name in settings.models
  }
  trainers = {}
  total = sum(len(c.seeds) * len(c.peak_learning_rates) * c.num_epochs for c in cells)
  bar = tqdm.tqdm(total=total, unit="run-epoch", disable=not progress, desc=settings.dataset)
  for cell in cells:
    if time.perf_counter() - start > budget_seconds:
      bar.write(f"budget spent: skipping {cell.model} {cell.optimizer} B={cell.batch_size}")
      continue
    key = (cell.model, cell.optimizer, cell.batch_size)
    if key not in trainers:
      make_optimizer = study_engine.OptimizerHparams(
        trust_coefficient=OPTIMIZER_SETUPS[cell.optimizer].trust_coefficient
      ).factory(cell.optimizer)
      trainers[key] = study_engine.GridTrainer(
        models[cell.model],
        make_optimizer,
        split,
        cell.batch_size,
        runs_per_call,
      )
    bar.set_postfix_str(f"{cell.model} {cell.optimizer} B={cell.batch_size} E={cell.num_epochs}")
    cell.runs = trainers[key].run(
      cell.seeds,
      cell.peak_learning_rates,
      num_epochs=cell.num_epochs,
      warmup_epochs=settings.warmup_epochs,
      on_epoch=bar.update,
    )
  bar.close()
  return cells


def describe(settings: StudySettings, cells: Sequence[study_report.Cell], seconds: float) -> str:
  """The setup paragraph of the report: data, budget, grids, machine, time and command."""
  sweep = [c for c in cells if c.kind == study_report.SWEEP]
  grids = "; ".join(
    f"{o}: {', '.join(f'{v:g}' for v in settings.grid(o))} at B={min(settings.batch_sizes)}, "
    f"{OPTIMIZER_SETUPS[o].scaling} scaling"
    for o in dict.fromkeys(settings.optimizers + settings.longer_optimizers)
  )
  machine = (
    f"{platform.machine()} {jax.default_backend()} ({os.cpu_count()} CPU cores), jax {jax.__version__}"
  )
  return "\n".join(
    [
      f"- Data: {settings.dataset}, validation {settings.val_examples} examples carved from training, "
      f"training {settings.train_examples or 'all the rest'}; test = the data set's evaluation split.",
      f"- Budget: {settings.num_epochs} epochs (warm-up {settings.warmup_epochs:g}, then poly(2) to 0), "
      f"{settings.num_seeds} seeds per learning rate, {len(sweep)} sweep grids; momentum 0.9, "
      "weight decay 5e-4 (kernels only), η = 0.001 (LARC 0.02).",
      f"- Base LR grids: {grids}.",
      f"- Machine: {machine}; wall-clock {seconds / 60:.1f} min (compilation included).",
      f"- Command: `{shlex.join(['python', '-m', 'benchmarks.large_batch_study', *sys.argv[1:]])}`",
    ]
  )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", action="append", help="repeatable; default: digits")
  parser.add_argument("--quick", action="store_true", help="tiny settings that run in seconds")
  parser.add_argument("--models", nargs="+")
  parser.add_argument("--optimizers", nargs="+", choices=sorted(OPTIMIZER_SETUPS))
  parser.add_argument("--batch_sizes", nargs="+", type=int)
  parser.add_argument("--num_epochs", type=int)
  parser.add_argument("--warmup_epochs", type=float)
  parser.add_argument("--num_seeds", type=int)
  parser.add_argument("--val_examples", type=int)
  parser.add_argument("--train_examples", type=int)
  parser.add_argument("--longer_factor", type=int, help="0: no train-longer runs")
  parser.add_argument("--longer_optimizers", nargs="+", choices=sorted(OPTIMIZER_SETUPS))
  parser.add_argument(
    "--lr_grid",
    action="append",
    default=[],
    metavar="OPTIMIZER=LR,LR,...",
    help="base learning rates of one optimizer at the smallest batch (repeatable)",
  )
  parser.add_argument("--data_dir")
  parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT_DIR)
  parser.add_argument("--budget_minutes", type=float, default=float("inf"), help="for all data sets")
  parser.add_argument("--runs_per_call", type=int, help="runs per vmapped step; default 1 on CPU")
  parser.add_argument("--no_progress", action="store_true")
  return parser.parse_args(argv)


def _parse_grids(specs: Sequence[str]) -> dict[str, tuple[float, ...]] | None:
  grids = {}
  for spec in specs:
    name, _, values = spec.partition("=")
    if name not in OPTIMIZER_SETUPS or not values:
      raise ValueError(f"--lr_grid must look like sgd=0.01,0.1 with a known optimizer, got {spec!r}.")
    grids[name] = tuple(float(v) for v in values.split(","))
  return grids or None


def main(argv: Sequence[str]) -> dict[str, dict[str, Path]]:
  """Runs the study for every ``--dataset`` and writes its outputs; returns their paths by data set."""
  args = parse_args(argv)
  start = time.perf_counter()
  overrides = dict(
    models=args.models and tuple(args.models),
    optimizers=args.optimizers and tuple(args.optimizers),
    batch_sizes=args.batch_sizes and tuple(args.batch_sizes),
    num_epochs=args.num_epochs,
    warmup_epochs=args.warmup_epochs,
    num_seeds=args.num_seeds,
    val_examples=args.val_examples,
    train_examples=args.train_examples,
    longer_factor=args.longer_factor,
    longer_optimizers=args.longer_optimizers and tuple(args.longer_optimizers),
    grids=_parse_grids(args.lr_grid),
    data_dir=args.data_dir,
  )
  outputs = {}
  for dataset in args.dataset or ["digits"]:
    settings = settings_for(dataset, quick=args.quick, **overrides)
    dataset_start = time.perf_counter()
    cells = run_study(
      settings,
      budget_seconds=60 * args.budget_minutes - (dataset_start - start),
      runs_per_call=args.runs_per_call,
      progress=not args.no_progress,
    )
    seconds = time.perf_counter() - dataset_start
    name = f"study_{dataset}" + ("_quick" if args.quick else "")
    outputs[dataset] = study_report.write(
      args.output_dir,
      name,
      f"Large-batch study: {dataset}",
      describe(settings, cells, seconds),
      cells,
      {"settings": dataclasses.asdict(settings), "seconds": seconds},
    )
    print(study_report.summary_table(cells))
    print(f"{dataset}: {seconds / 60:.1f} min; wrote {', '.join(map(str, outputs[dataset].values()))}")
  print(f"Total time: {(time.perf_counter() - start) / 60:.1f} min")
  return outputs


if __name__ == "__main__":
  main(sys.argv[1:])
