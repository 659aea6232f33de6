"""Tables (Markdown), plots (PNG) and raw numbers (JSON) of the large-batch study.

Everything here reads the records of `experiments.large_batch_study.study.run_dataset` (also stored as
``study_<dataset>.json``), so that

  python -m experiments.large_batch_study.report experiments/large_batch_study/results/study_digits.json

re-renders a report without training.
"""

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed.
import matplotlib.pyplot as plt

CONTENDERS = ("sgd_linear", "sgd_tuned", "lars")
ABLATION = "lars_rank_mask"  # lars with the library's default mask (biases, batch norm: plain SGD).
SMOKE_TEST = (
  "Smoke test (--quick): tiny settings that check the study runs end to end; these numbers are not the "
  "study's result."
)


def _pct(entry: Mapping[str, Any]) -> str:
  return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"


def _lr(entry: Mapping[str, Any]) -> str:
  tuning = entry.get("tuning")
  mark = ""
  if tuning:
    mark = (f" +{tuning['widened']}" if tuning["widened"] else "") + (" †" if tuning["at_edge"] else "")
  return f"{entry['lr']:.3g}{mark}"


def headline_sentence(result: Mapping[str, Any]) -> str:
  """One measured sentence: the no-BN model at its largest batch against its smallest, per contender."""
  name = next(n for n, m in result["models"].items() if not m["batch_norm"])
  batches = result["models"][name]["batches"]
  small, large = batches[0], batches[-1]

  def drop(c):
    a, b = small["test_accuracy"][c]["mean"], large["test_accuracy"][c]["mean"]
    return f"{100 * a:.1f}% → {100 * b:.1f}% ({100 * (b - a):+.1f} points)"

  smoke = "Smoke test, not the study's result: " if result.get("smoke_test") else ""
  return smoke + (
    f"{result['dataset']}, {name} (no BN), B = {small['batch_size']} → {large['batch_size']} at "
    f"{result['settings']['num_epochs']} epochs ({small['steps']} → {large['steps']} steps): LARS "
    f"{drop('lars')}, linear-scaled SGD {drop('sgd_linear')}, re-tuned SGD {drop('sgd_tuned')}."
  )


def sweep_table(result: Mapping[str, Any]) -> str:
  """Batch × (model, contender): test accuracy % mean ± std over seeds, and the γ_0 used."""
  models = result["models"]
  header = "| model | batch | steps | " + " | ".join(f"{c} % (γ₀)" for c in CONTENDERS) + " |"
  lines = [header, "|---|---:|---:|" + "---|" * len(CONTENDERS)]
  for name, model in models.items():
    for b in model["batches"]:
      cells = [f"{_pct(b['test_accuracy'][c])} ({_lr(b['test_accuracy'][c])})" for c in CONTENDERS]
      lines.append(f"| {name} | {b['batch_size']} | {b['steps']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def ablation_sentence(result: Mapping[str, Any]) -> str:
  """The mask ablation in one sentence: every leaf adapted against the default mask, per batch."""
  ablation = result["mask_ablation"]
  cells = [
    f"B = {b['batch_size']}: {100 * b['lars']['mean']:.1f}% against {100 * b[ABLATION]['mean']:.1f}%"
    for b in ablation["batches"]
  ]
  return (
    f"{ablation['model']} with LARS adapting every layer's weights and biases (the paper's Algorithm 1, "
    f"`lars`) against LARS with the library's default mask (biases at plain SGD, `{ABLATION}`): "
    + "; ".join(cells)
    + "."
  )


def ablation_table(result: Mapping[str, Any]) -> str:
  """The no-BN model at the smallest and largest batch: ``lars`` against ``lars_rank_mask``."""
  lines = [f"| batch | steps | lars % (γ₀) | {ABLATION} % (γ₀) |", "|---:|---:|---|---|"]
  for b in result["mask_ablation"]["batches"]:
    cells = [f"{_pct(b[c])} ({_lr(b[c])})" for c in ("lars", ABLATION)]
    lines.append(f"| {b['batch_size']} | {b['steps']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def full_batch_table(result: Mapping[str, Any]) -> str:
  """The no-BN model with the whole training set as its batch: every contender, the ablation ("": none)."""
  full = result.get("full_batch")
  if not full:
    return ""
  contenders = (*CONTENDERS, ABLATION)
  lines = [
    "| model | batch | epochs = steps | " + " | ".join(f"{c} % (γ₀)" for c in contenders) + " |",
    "|---|---:|---:|" + "---|" * len(contenders),
  ]
  cells = [f"{_pct(full['test_accuracy'][c])} ({_lr(full['test_accuracy'][c])})" for c in contenders]
  lines.append(f"| {full['model']} | {full['batch_size']} | {full['steps']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def epochs_table(result: Mapping[str, Any]) -> str:
  """Table 5 analogue: the largest batch of the no-BN model against the epoch budget."""
  rows = result["epochs"]["rows"]
  lines = ["| epochs | steps | sgd_tuned % (γ₀) | lars % (γ₀) |", "|---:|---:|---|---|"]
  for row in rows:
    cells = [
      f"{_pct(row['test_accuracy'][c])} ({_lr(row['test_accuracy'][c])})" for c in ("sgd_tuned", "lars")
    ]
    lines.append(f"| {row['epochs']} | {row['steps']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def grid_table(result: Mapping[str, Any]) -> str:
  """Every tuning grid: seed 0's validation accuracy per γ_0, the choice and how often it was widened."""
  lines = [
    "| model | contender | batch | epochs | γ₀: validation % (seed 0) | chosen | widened |",
    "|---|---|---:|---:|---|---:|---:|",
  ]

  def add(model, contender, batch, epochs, entry):
    tuning = entry.get("tuning")
    if not tuning:
      return
    grid = ", ".join(f"{lr:.3g}: {100 * v:.1f}" for lr, v in zip(tuning["grid"], tuning["val"], strict=True))
    edge = " †" if tuning["at_edge"] else ""
    lines.append(
      f"| {model} | {contender} | {batch} | {epochs} | {grid} | {entry['lr']:.3g}{edge} "
      f"| {tuning['widened']} |"
    )

  epochs = result["settings"]["num_epochs"]
  for name, model in result["models"].items():
    for b in model["batches"]:
      for c in ("sgd_tuned", "lars"):
        add(name, c, b["batch_size"], epochs, b["test_accuracy"][c])
  for row in result["epochs"]["rows"]:
    if row["epochs"] != epochs:
      for c in ("sgd_tuned", "lars"):
        add(
          result["epochs"]["model"], c, result["epochs"]["batch_size"], row["epochs"], row["test_accuracy"][c]
        )
  for b in result["mask_ablation"]["batches"]:
    add(result["mask_ablation"]["model"], ABLATION, b["batch_size"], epochs, b[ABLATION])
  full = result.get("full_batch")
  if full:
    for c in ("sgd_tuned", "lars", ABLATION):
      add(full["model"], c, full["batch_size"], full["epochs"], full["test_accuracy"][c])
  return "\n".join(lines)


def trust_ratio_table(result: Mapping[str, Any]) -> str:
  """λ per adapted layer at the last step of seed 0's chosen LARS run, per (model, batch)."""
  ratios = result["trust_ratios"]
  if not ratios:
    return ""
  layers = list(dict.fromkeys(layer for r in ratios.values() for layer in r))
  lines = ["| run | " + " | ".join(layers) + " |", "|---|" + "---:|" * len(layers)]
  for run, r in ratios.items():
    lines.append(
      f"| {run} | " + " | ".join(f"{r[layer]:.3g}" if layer in r else "" for layer in layers) + " |"
    )
  return "\n".join(lines)


def setup(result: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
  s = result["settings"]
  if result["dataset"] == "mnist1d":
    validation = f"generated by mnist1d's make_dataset with seed {s['val_seed']}"
  else:
    validation = "carved from the training split"
  return "\n".join(
    [
      f"- Data: {result['dataset']}: {result['num_train']:,} training, {result['num_val']:,} validation "
      f"({validation}), "
      f"{result['num_test']:,} test examples.",
      f"- Budget: {s['num_epochs']} epochs for every batch of {tuple(s['batch_sizes'])}; linear warm-up over "
      f"{100 * s['warmup_fraction']:.0f}% of the steps, then poly(2) to 0; momentum 0.9, weight decay 5e-4 "
      "(SGD: kernels only; LARS: every leaf), LARS η = 0.001 with every layer's weights and biases "
      "adapted (`lars_optax.every_leaf_mask`).",
      f"- Models: {', '.join(result['models'])} with {s['model_kwargs']}.",
      f"- Tuning: seed 0 over a grid spaced by 2, widened at an edge up to {s['max_widenings']} times "
      f"(`+k`: widened k times; `†`: still at an edge); then {s['num_seeds']} seeds at the choice.",
      f"- Machine: {summary['machine']}; this data set {result['seconds'] / 60:.1f} min; "
      f"whole command {summary['wall_minutes']:.1f} min.",
      f"- Command: `{summary['command']}`",
    ]
  )


def markdown(result: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
  parts = [
    *([f"**{SMOKE_TEST}**"] if result.get("smoke_test") else []),
    f"## Large-batch study: {result['dataset']}",
    headline_sentence(result),
    setup(result, summary),
    "### Test accuracy (mean ± std over seeds) at γ₀ chosen on validation",
    sweep_table(result),
    f"### Epoch budget at B = {result['epochs']['batch_size']}, {result['epochs']['model']} "
    "(Table 5 analogue)",
    epochs_table(result),
    "### The mask: LARS on every layer against the library's default mask (no-BN model)",
    ablation_sentence(result),
    ablation_table(result),
    *(
      [
        f"### The whole training set as the batch ({result['full_batch']['batch_size']} examples, one step "
        "per epoch), no-BN model",
        full_batch_table(result),
      ]
      if full_batch_table(result)
      else []
    ),
    "### Every tuning grid",
    grid_table(result),
  ]
  ratios = trust_ratio_table(result)
  if ratios:
    parts += ["### LARS trust ratios λ at the last step (seed 0, chosen γ₀)", ratios]
  return "\n\n".join(parts) + "\n"


def plot_accuracy_vs_batch(result: Mapping[str, Any], path: Path) -> None:
  """One panel per model: test accuracy against B per contender; the step count labels each batch."""
  models = result["models"]
  fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
  for ax, (name, model) in zip(axes[0], models.items(), strict=True):
    sizes = [b["batch_size"] for b in model["batches"]]
    for c, marker in zip(CONTENDERS, "sDo", strict=True):
      means = [100 * b["test_accuracy"][c]["mean"] for b in model["batches"]]
      stds = [100 * b["test_accuracy"][c]["std"] for b in model["batches"]]
      ax.errorbar(sizes, means, stds, marker=marker, capsize=3, label=c)
    if name == result["mask_ablation"]["model"]:
      rows = result["mask_ablation"]["batches"]
      ax.errorbar(
        [b["batch_size"] for b in rows],
        [100 * b[ABLATION]["mean"] for b in rows],
        [100 * b[ABLATION]["std"] for b in rows],
        marker="x",
        linestyle=":",
        color="grey",
        capsize=3,
        label=f"{ABLATION} (default mask)",
      )
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [f"{b['batch_size']}\n{b['steps']} steps" for b in model["batches"]])
    ax.minorticks_off()
    ax.set_xlabel(f"global batch B ({result['settings']['num_epochs']} epochs each)")
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0][0].set_ylabel("test accuracy % (γ₀ chosen on validation)")
  fig.suptitle(f"{result['dataset']}: accuracy against batch at a fixed epoch budget")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_epochs(result: Mapping[str, Any], path: Path) -> None:
  """Table 5 analogue: test accuracy at the largest batch against the epoch budget."""
  rows = result["epochs"]["rows"]
  fig, ax = plt.subplots(figsize=(5.5, 4.2))
  for c, marker in (("sgd_tuned", "D"), ("lars", "o")):
    ax.errorbar(
      [r["epochs"] for r in rows],
      [100 * r["test_accuracy"][c]["mean"] for r in rows],
      [100 * r["test_accuracy"][c]["std"] for r in rows],
      marker=marker,
      capsize=3,
      label=c,
    )
  ax.set_xscale("log", base=2)
  ax.set_xticks([r["epochs"] for r in rows], [f"{r['epochs']}\n{r['steps']} steps" for r in rows])
  ax.minorticks_off()
  ax.set_xlabel("epoch budget")
  ax.set_ylabel("test accuracy %")
  ax.set_title(f"{result['dataset']}, {result['epochs']['model']}, B = {result['epochs']['batch_size']}")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write(
  output_dir: Path, name: str, result: Mapping[str, Any], summary: Mapping[str, Any]
) -> dict[str, Path]:
  """Writes ``<name>.json`` (first, so a failing plot loses nothing), ``<name>.md`` and two plots."""
  paths = {
    f"{result['dataset']}_json": output_dir / f"{name}.json",
    f"{result['dataset']}_markdown": output_dir / f"{name}.md",
    f"{result['dataset']}_accuracy_vs_batch": output_dir / f"{name}_accuracy_vs_batch.png",
    f"{result['dataset']}_epochs": output_dir / f"{name}_epochs.png",
  }
  paths[f"{result['dataset']}_json"].write_text(
    json.dumps(dict(result) | {"summary": dict(summary)}, indent=1) + "\n"
  )
  paths[f"{result['dataset']}_markdown"].write_text(markdown(result, summary))
  plot_accuracy_vs_batch(result, paths[f"{result['dataset']}_accuracy_vs_batch"])
  plot_epochs(result, paths[f"{result['dataset']}_epochs"])
  return paths


if __name__ == "__main__":
  for argument in sys.argv[1:]:
    source = Path(argument)
    record = json.loads(source.read_text())
    write(source.parent, source.stem, record, record["summary"])
