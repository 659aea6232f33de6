"""The schema of ``study_summary.json`` and the rules of the study's regime, checked on the numbers.

`validate` checks the schema exactly (no key missing, none added, types, accuracies as fractions);
`regime_problems` checks the paper's protocol at small scale (the rules `settings.sweep_for` follows);
`headline` computes the paper's claim, each contender's loss at the largest batch, from the summary alone.
"""

import math
from collections.abc import Mapping
from typing import Any

CONTENDERS = ("sgd_linear", "sgd_tuned", "lars")
MIN_BATCHES, MIN_RATIO, MIN_STEPS = 4, 16, 200  # batch sizes per sweep, largest / smallest, its steps


def _require(condition: bool, where: str, what: str) -> None:
  if not condition:
    raise ValueError(f"{where}: {what}")


def _keys(value: Any, keys: set[str], where: str) -> None:
  _require(isinstance(value, Mapping), where, f"must be an object, got {type(value).__name__}")
  _require(set(value) == keys, where, f"keys must be {sorted(keys)}, got {sorted(value)}")


def _number(value: Any, where: str) -> float:
  ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
  _require(ok, where, f"must be a finite number, got {value!r}")
  return float(value)


def validate(summary: Any) -> None:
  """Raises ValueError, naming the first offending field, unless ``summary`` has exactly the schema."""
  _keys(summary, {"command", "wall_minutes", "machine", "datasets"}, "summary")
  _require(isinstance(summary["command"], str) and summary["command"], "command", "must be a non-empty str")
  _require(isinstance(summary["machine"], str) and summary["machine"], "machine", "must be a non-empty str")
  _require(_number(summary["wall_minutes"], "wall_minutes") > 0, "wall_minutes", "must be positive")
  _require(isinstance(summary["datasets"], Mapping) and summary["datasets"], "datasets", "must be non-empty")
  for name, dataset in summary["datasets"].items():
    _keys(dataset, {"models"}, f"datasets.{name}")
    _require(bool(dataset["models"]), f"datasets.{name}.models", "must be non-empty")
    for model_name, model in dataset["models"].items():
      where = f"datasets.{name}.models.{model_name}"
      _keys(model, {"batch_norm", "batches"}, where)
      _require(isinstance(model["batch_norm"], bool), f"{where}.batch_norm", "must be a bool")
      _require(isinstance(model["batches"], list) and model["batches"], f"{where}.batches", "must be a list")
      for i, batch in enumerate(model["batches"]):
        at = f"{where}.batches[{i}]"
        _keys(batch, {"batch_size", "steps", "test_accuracy"}, at)
        for field in ("batch_size", "steps"):
          value = batch[field]
          ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
          _require(ok, f"{at}.{field}", f"must be a positive int, got {value!r}")
        _keys(batch["test_accuracy"], set(CONTENDERS), f"{at}.test_accuracy")
        for contender in CONTENDERS:
          entry = batch["test_accuracy"][contender]
          here = f"{at}.test_accuracy.{contender}"
          _keys(entry, {"mean", "std", "lr"}, here)
          _require(0 <= _number(entry["mean"], f"{here}.mean") <= 1, f"{here}.mean", "must be a fraction")
          _require(0 <= _number(entry["std"], f"{here}.std") <= 0.5, f"{here}.std", "must be in [0, 0.5]")
          _require(_number(entry["lr"], f"{here}.lr") > 0, f"{here}.lr", "must be positive")


def regime_problems(summary: Mapping[str, Any]) -> list[str]:
  """What breaks the paper's protocol in a valid summary; empty when none.

  Per data set: a no-BN and a BN model; per model at least 4 batch sizes, sorted and distinct, the
  largest at least 16x the smallest and taking at least 200 steps; one epoch budget for the whole sweep,
  so steps x batch (the examples processed) agrees within 10% across the sweep (an epoch drops its last
  partial batch).
  """
  problems = []
  for name, dataset in summary["datasets"].items():
    norms = sorted(m["batch_norm"] for m in dataset["models"].values())
    if norms != [False, True]:
      problems.append(f"{name}: needs one no-BN and one BN model, got batch_norm {norms}")
    for model_name, model in dataset["models"].items():
      where = f"{name}/{model_name}"
      sizes = [b["batch_size"] for b in model["batches"]]
      steps = {b["batch_size"]: b["steps"] for b in model["batches"]}
      if len(sizes) < MIN_BATCHES or sizes != sorted(set(sizes)):
        problems.append(f"{where}: needs >= {MIN_BATCHES} distinct sorted batch sizes, got {sizes}")
        continue
      if sizes[-1] < MIN_RATIO * sizes[0]:
        problems.append(f"{where}: largest batch {sizes[-1]} < {MIN_RATIO} x smallest {sizes[0]}")
      if steps[sizes[-1]] < MIN_STEPS:
        problems.append(f"{where}: {steps[sizes[-1]]} steps at B={sizes[-1]} < {MIN_STEPS}")
      examples = [steps[b] * b for b in sizes]  # E * (N - the partial batch dropped per epoch)
      if min(examples) < 0.9 * max(examples):
        problems.append(f"{where}: steps x batch {examples} is not one epoch budget")
  return problems


def headline(summary: Mapping[str, Any], dataset: str) -> dict[str, float]:
  """The paper's claim at the largest batch of the no-BN model: each contender's loss against its smallest.

  Returns ``{"model", "batch_size", "steps", "<contender>_small", "<contender>_large", "<contender>_drop"}``
  with accuracies as fractions and drops as small-batch minus large-batch accuracy.
  """
  models = summary["datasets"][dataset]["models"]
  name, model = next((n, m) for n, m in models.items() if not m["batch_norm"])
  small, large = model["batches"][0], model["batches"][-1]
  out = {"model": name, "batch_size": large["batch_size"], "steps": large["steps"]}
  for c in CONTENDERS:
    a, b = small["test_accuracy"][c]["mean"], large["test_accuracy"][c]["mean"]
    out |= {f"{c}_small": a, f"{c}_large": b, f"{c}_drop": a - b}
  return out
