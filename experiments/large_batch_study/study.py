"""The LARS paper's large-batch experiment at small scale: linear-scaled SGD, re-tuned SGD and LARS.

The protocol of You, Gitman & Ginsburg (2017, Tables 1-5): one epoch budget E for every batch size B of a
sweep, so a larger batch takes fewer steps. Per data set, four batch sizes; the largest is 16x the
smallest and still takes at least 200 optimizer steps in the budget (`settings.sweep_for` sizes the sweep
to the data set). Three contenders, each with momentum m = 0.9, weight decay β = 5e-4 on the kernels
(never in the loss), the same linear warm-up from 0 and poly(2) decay to 0 at the end of the budget:

- ``sgd_linear``: momentum SGD with the linear scaling rule, γ_0(B) = γ_base · B / B_min, γ_base tuned at
  B_min (the paper's baseline, after Goyal et al. 2017);
- ``sgd_tuned``: momentum SGD with γ_0 re-tuned at every batch (the counterpoint of Nado et al. 2021);
- ``lars``: ``lars_optax.lars`` with the paper's hyperparameters (η = 0.001, β = 5e-4, m = 0.9), every
  layer's weights and biases adapted as in the paper's Algorithm 1 (``mask=lars_optax.every_leaf_mask``),
  γ_0 tuned at every batch.

The library's default mask instead steps biases and batch-norm parameters by plain momentum SGD at γ_t; at
LARS-sized γ_0 that wrecks a network without batch norm. The study measures it as an ablation,
``lars_rank_mask``: the no-BN model at the smallest and the largest batch, tuned on the same grid as ``lars``
(reported in the tables, not in the summary).

Near the whole data set: where ``full_batch_epochs`` is set (digits), the no-BN model is also trained with
the whole training set as its batch (one step per epoch) for that many steps, every contender and the
ablation, each tuned as above (tables only).

Tuning: a grid of peak learning rates spaced by 2 is trained with seed 0 and the value with the best
validation accuracy is chosen; while it sits at an edge of the grid, the grid is widened by one value
beyond that edge (at most ``max_widenings`` times, reported). When no value of the grid trains (validation
accuracy at most twice chance), the grid is widened downwards: a learning rate too large to train is the
usual cause, and an argmax among chance-level ties means nothing. Seeds 1 and 2 are then trained at the
chosen value, and the test accuracy is reported as mean ± std over the 3 seeds. At B_min, ``sgd_linear``
and ``sgd_tuned`` are one and the same tuned run; at every other batch ``sgd_linear``'s γ_0 is a point of
``sgd_tuned``'s grid (its top value), so the grids share runs. The paper's Table 5 analogue: at the
largest batch, the no-BN model is trained again with ``lars`` and ``sgd_tuned`` for other epoch budgets,
γ_0 re-tuned for each.

Cost: every point of a sweep processes E·N examples whatever its batch, E·N ≥ 200·B_max, so B_max and the
step floor set the price of the whole study; the models are the registry's no-BN / BN pairs at reduced
widths (`settings.MODEL_KWARGS`).

References:
  You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
  https://arxiv.org/abs/1708.03888
  Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017,
  https://arxiv.org/abs/1706.02677
  Nado et al., "A Large Batch Optimizer Reality Check", 2021, https://arxiv.org/abs/2102.06356
  Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024,
  https://arxiv.org/abs/2011.14439
"""

import dataclasses
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

import lars_optax
from experiments.large_batch_study import engine
from experiments.large_batch_study.settings import StudySettings, load_data
from models import get_model

CONTENDERS = ("sgd_linear", "sgd_tuned", "lars")
ABLATION = "lars_rank_mask"
# Engine recipe (a name of `RECIPES`, the key of a run) of each contender.
_RECIPE = MappingProxyType(
  {"sgd_linear": "sgd", "sgd_tuned": "sgd", "lars": "lars", ABLATION: "lars_rank_mask"}
)
# recipe -> (optimizer of `training.optimizers.OPTIMIZERS`, its hyperparameters).
RECIPES: Mapping[str, tuple[str, engine.OptimizerHparams]] = MappingProxyType(
  {
    "sgd": ("sgd", engine.OptimizerHparams()),
    "lars": ("lars", engine.OptimizerHparams(lars_mask="every_leaf")),
    "lars_rank_mask": ("lars", engine.OptimizerHparams(lars_mask="rank")),
  }
)


@dataclasses.dataclass
class Point:
  """One finished run: (model, optimizer, batch, epochs, seed, γ_0) -> its accuracies."""

  val_accuracy: float
  test_accuracy: float
  final_loss: float  # mean training loss of the last epoch (inf or NaN once diverged)
  trust_ratio: dict[str, float]  # LARS: λ per adapted layer at the last step; {} otherwise
  param_norm: dict[str, float]
  grad_norm: dict[str, float]


class Study:
  """Trains runs on demand and remembers them, so that contenders and grids share their runs."""

  def __init__(self, settings: StudySettings, runs_per_call: int | None = None, log=print):
    self.settings = settings
    self.split = load_data(settings)
    self.num_train = len(self.split.train_labels)
    self._runs_per_call = runs_per_call
    self._log = log
    self._models = {
      name: engine.CompiledModel(
        get_model(name, num_classes=self.split.num_classes, **settings.model_kwargs),
        self.split.train_images[:1],
      )
      for name in settings.models
    }
    self._trainers = {}
    self.points: dict[tuple, Point] = {}
    self.seconds = 0.0

  def steps(self, batch_size: int, num_epochs: int) -> int:
    return num_epochs * lars_optax.steps_per_epoch(self.num_train, batch_size)

  def train(self, model: str, optimizer: str, batch: int, epochs: int, seeds, learning_rates) -> None:
    """Trains every (seed, γ_0) not yet trained; the learning rates of one seed share one grid."""
    missing = lambda s, lr: (model, optimizer, batch, epochs, s, lr) not in self.points
    seeds = [s for s in seeds if any(missing(s, lr) for lr in learning_rates)]
    todo = [lr for lr in learning_rates if any(missing(s, lr) for s in seeds)]
    if not todo:
      return
    key = (model, optimizer, batch)
    if key not in self._trainers:
      name, hparams = RECIPES[optimizer]
      make = hparams.factory(name)
      self._trainers[key] = engine.GridTrainer(
        self._models[model], make, self.split, batch, self._runs_per_call
      )
    runs = self._trainers[key].run(
      list(seeds), todo, num_epochs=epochs, warmup_epochs=self.settings.warmup_fraction * epochs
    )
    self.seconds += runs.seconds
    for i, seed in enumerate(seeds):
      for j, lr in enumerate(todo):
        diag = {f: {k: float(v[i, j, -1]) for k, v in d.items()} for f, d in runs.diagnostics.items()}
        self.points[(model, optimizer, batch, epochs, seed, lr)] = Point(
          float(runs.val_accuracy[i, j]),
          float(runs.test_accuracy[i, j]),
          float(runs.train_loss[i, j, -1]),
          diag.get("trust_ratio", {}),
          diag.get("param_norm", {}),
          diag.get("grad_norm", {}),
        )
    self._log(
      f"{self.settings.dataset} {model} {optimizer} B={batch} E={epochs} seeds={list(seeds)} "
      f"γ₀={[f'{v:.4g}' for v in todo]}: {runs.seconds:.1f} s"
    )

  def point(self, model, optimizer, batch, epochs, seed, lr) -> Point:
    return self.points[(model, optimizer, batch, epochs, seed, lr)]

  def tune(self, model: str, optimizer: str, batch: int, epochs: int, grid: Sequence[float]) -> dict:
    """Chooses γ_0 on seed 0's validation accuracy, widening the grid until the choice is interior.

    A grid none of whose values trains (validation accuracy ≤ twice chance) is widened downwards.
    """
    grid, widened = sorted(set(grid)), 0
    trains = 2 / self.split.num_classes
    while True:
      self.train(model, optimizer, batch, epochs, [0], grid)
      val = [self.point(model, optimizer, batch, epochs, 0, lr).val_accuracy for lr in grid]
      choice = int(np.argmax(val))  # ties: the smaller learning rate.
      interior = 0 < choice < len(grid) - 1 and max(val) > trains
      if interior or widened >= self.settings.max_widenings:
        break
      grid = [grid[0] / 2, *grid] if choice == 0 or max(val) <= trains else [*grid, grid[-1] * 2]
      widened += 1
    return dict(grid=grid, val=val, lr=grid[choice], widened=widened, at_edge=not interior)

  def seeds_at(self, model, optimizer, batch, epochs, lr) -> dict:
    """Mean and std over the seeds of the test accuracy at ``lr`` (trained where missing)."""
    seeds = range(self.settings.num_seeds)
    self.train(model, optimizer, batch, epochs, seeds, [lr])
    points = [self.point(model, optimizer, batch, epochs, s, lr) for s in seeds]
    test = np.asarray([p.test_accuracy for p in points])
    return dict(
      mean=float(test.mean()),
      std=float(test.std()),
      lr=float(lr),
      test=test.tolist(),
      val=[p.val_accuracy for p in points],
      diverged=int(sum(not np.isfinite(p.final_loss) for p in points)),
    )


def _sgd_grid(linear: float) -> list[float]:
  """``sgd_tuned``'s first grid at a batch: the linear-scaling rate and three halvings below it."""
  return [linear / 8, linear / 4, linear / 2, linear]


def _lars_grid(chosen: float) -> list[float]:
  """``lars``'s first grid at a larger batch, from γ_0 chosen at a smaller one (LARS's γ_0 grows with B)."""
  return [chosen / 2, chosen, chosen * 2, chosen * 4]


def _contender(study: Study, model: str, contender: str, batch: int, epochs: int, grid) -> dict:
  optimizer = _RECIPE[contender]
  tuning = study.tune(model, optimizer, batch, epochs, grid)
  return study.seeds_at(model, optimizer, batch, epochs, tuning["lr"]) | {"tuning": tuning}


def run_model(study: Study, model: str) -> dict:
  """The batch sweep of one model: every contender at every batch."""
  s = study.settings
  b_min, epochs = min(s.batch_sizes), s.num_epochs
  batches, lars_grid = [], s.lars_grid
  for batch in sorted(s.batch_sizes):
    entry = dict(batch_size=batch, steps=study.steps(batch, epochs), test_accuracy={})
    acc = entry["test_accuracy"]
    if batch == b_min:
      tuned = _contender(study, model, "sgd_tuned", batch, epochs, s.sgd_grid)
      base = tuned["lr"]
      acc["sgd_linear"] = dict(tuned, tuning=None)
    else:
      linear = base * batch / b_min
      tuned = _contender(study, model, "sgd_tuned", batch, epochs, _sgd_grid(linear))
      acc["sgd_linear"] = study.seeds_at(model, "sgd", batch, epochs, linear) | {"tuning": None}
    acc["sgd_tuned"] = tuned
    acc["lars"] = _contender(study, model, "lars", batch, epochs, lars_grid)
    chosen = acc["lars"]["lr"]
    lars_grid = _lars_grid(chosen)  # the next, larger batch starts here.
    batches.append(entry)
  return dict(batch_norm=model.endswith("_bn"), batches=batches)


def run_mask_ablation(study: Study, model: str, sweep: dict) -> dict:
  """``lars`` with the library's default mask, at the smallest and largest batch, on ``lars``'s grids."""
  rows = []
  for entry in (sweep["batches"][0], sweep["batches"][-1]):
    lars = entry["test_accuracy"]["lars"]
    ablation = _contender(
      study, model, ABLATION, entry["batch_size"], study.settings.num_epochs, lars["tuning"]["grid"]
    )
    rows.append(dict(batch_size=entry["batch_size"], steps=entry["steps"], lars=lars, **{ABLATION: ablation}))
  return dict(model=model, batches=rows)


def run_full_batch(study: Study, model: str, sweep: dict) -> dict | None:
  """The no-BN model with the whole training set as its batch (one step per epoch), every contender.

  The grids start where the sweep's largest batch ended: ``sgd_linear`` scales its base rate to this
  batch; ``sgd_tuned`` starts from that rate and ``lars`` from its own choice, widened as in `Study.tune`.
  """
  epochs = study.settings.full_batch_epochs
  if epochs is None:
    return None
  batch, b_min = study.num_train, sweep["batches"][0]["batch_size"]
  base = sweep["batches"][0]["test_accuracy"]["sgd_linear"]["lr"]
  linear, lars = base * batch / b_min, sweep["batches"][-1]["test_accuracy"]["lars"]["lr"]
  lars_grid = _lars_grid(lars)
  acc = {
    "sgd_linear": study.seeds_at(model, "sgd", batch, epochs, linear) | {"tuning": None},
    "sgd_tuned": _contender(study, model, "sgd_tuned", batch, epochs, _sgd_grid(linear)),
    "lars": _contender(study, model, "lars", batch, epochs, lars_grid),
    ABLATION: _contender(study, model, ABLATION, batch, epochs, lars_grid),
  }
  return dict(
    model=model, batch_size=batch, epochs=epochs, steps=study.steps(batch, epochs), test_accuracy=acc
  )


def run_epochs(study: Study, model: str, sweep: dict) -> list[dict]:
  """Table 5 analogue: the largest batch of the no-BN model for every epoch budget, γ_0 re-tuned."""
  s = study.settings
  largest = max(sweep["batches"], key=lambda b: b["batch_size"])
  batch, rows = largest["batch_size"], []
  for epochs in sorted(s.epoch_budgets):
    row = dict(epochs=epochs, steps=study.steps(batch, epochs), test_accuracy={})
    for contender in ("sgd_tuned", "lars"):
      if epochs == s.num_epochs:
        row["test_accuracy"][contender] = largest["test_accuracy"][contender]
        continue
      c = largest["test_accuracy"][contender]["lr"]
      row["test_accuracy"][contender] = _contender(study, model, contender, batch, epochs, [c / 2, c, c * 2])
    rows.append(row)
  return rows


def run_dataset(settings: StudySettings, runs_per_call: int | None = None, log=print) -> dict:
  """The whole study of one data set: ``{"models": ..., "epochs": ..., "settings": ..., ...}``."""
  start = time.perf_counter()
  study = Study(settings, runs_per_call, log)
  models = {model: run_model(study, model) for model in settings.models}
  no_bn = settings.models[0]
  epochs = run_epochs(study, no_bn, models[no_bn])
  ablation = run_mask_ablation(study, no_bn, models[no_bn])
  full_batch = run_full_batch(study, no_bn, models[no_bn])
  chosen = {
    (m, b["batch_size"]): b["test_accuracy"]["lars"]["lr"] for m in models for b in models[m]["batches"]
  }
  lars_layers = {  # the sweep's chosen LARS runs, seed 0
    f"{m} B={b}": study.point(m, "lars", b, settings.num_epochs, 0, lr).trust_ratio
    for (m, b), lr in chosen.items()
  }
  return dict(
    dataset=settings.dataset,
    settings=dataclasses.asdict(settings) | {"model_kwargs": repr(dict(settings.model_kwargs))},
    num_train=study.num_train,
    num_val=len(study.split.val_labels),
    num_test=len(study.split.test_labels),
    models=models,
    epochs=dict(model=no_bn, batch_size=max(settings.batch_sizes), rows=epochs),
    mask_ablation=ablation,
    full_batch=full_batch,
    trust_ratios=lars_layers,
    points=[
      dict(zip(("model", "optimizer", "batch_size", "epochs", "seed", "lr"), k, strict=True))
      | dataclasses.asdict(p)
      for k, p in study.points.items()
    ],
    train_seconds=study.seconds,
    seconds=time.perf_counter() - start,
  )
