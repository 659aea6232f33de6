"""‖w‖/‖g‖ per layer at initialisation and after a few LARS steps: the observation behind LARS.

You, Gitman & Ginsburg (2017) noticed that in AlexNet the ratio of a layer's weight norm to its gradient
norm, ‖w‖/‖g‖, differs by orders of magnitude between layers, and between the weights and the biases of
one layer, after one iteration already, so that no single learning rate suits every layer; LARS gives each
layer the local rate

    λ = η ‖w‖ / (‖g‖ + β ‖w‖)        (η = 0.001, β = 5e-4)

This script measures ‖w‖, ‖g‖ and λ for every parameter leaf of a model of ``models/`` from the per-layer
diagnostics that ``lars_optax.lars`` records (``lars_optax.get_diagnostics``), after one iteration (as the
paper; at initialisation the biases are zero, and so are the gradients of the residual branches of a
ResNet whose last batch-norm scale in each block starts at zero) and after ``--steps`` iterations of LARS.
Each ‖g‖ is the gradient at the weights whose norm is given (the next step's gradient). The data are the
offline 8x8 digits, upscaled to ``--image_size`` and repeated over three channels (ImageNet-shaped inputs
without a download); the classifier has 10 outputs.

Run from the repository root (README.md beside this file gives the time measured):

  python -m experiments.trust_ratios                    # AlexNet and ResNet-50 at 224x224
  python -m experiments.trust_ratios --quick            # small_alexnet and resnet20 at 32x32, to build/

Outputs in ``--output_dir`` (default ``experiments/trust_ratios/results/``; with ``--quick``
``build/trust_ratios_quick/``): ``trust_ratios.md`` (a summary and one table per model) and
``trust_ratios.png`` (‖w‖/‖g‖ per layer, log scale, after one iteration and after ``--steps``).

References:
  You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
  https://arxiv.org/abs/1708.03888 (section 3 and Table 2: ‖w‖/‖∇w‖ of AlexNet-BN after one iteration).
"""

import argparse
import dataclasses
import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import input_pipeline
import lars_optax
from models import get_model
from training import steps as train_steps

matplotlib.use("Agg")  # files only: no display needed.
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT_DIR = HERE / "results"
QUICK_OUTPUT_DIR = HERE.parents[1] / "build" / "trust_ratios_quick"
WEIGHT_DECAY = 5e-4


@dataclasses.dataclass(frozen=True)
class LayerNorms:
  """Norms of one parameter leaf.

  Attributes:
    name: the leaf's path, e.g. ``"conv1/kernel"``.
    shape: its shape.
    adapted: whether LARS's default mask adapts it (rank > 1) or leaves it to plain momentum SGD.
    param_norm: ‖w‖ after one iteration.
    grad_norm: ‖g‖ of the gradient at those weights.
    trust_ratio: λ = η‖w‖/(‖g‖ + β‖w‖) of these norms (1 for leaves LARS does not adapt).
    param_norm_after: ‖w‖ after the K iterations.
    grad_norm_after: ‖g‖ of the gradient at those weights.
  """

  name: str
  shape: tuple[int, ...]
  adapted: bool
  param_norm: float
  grad_norm: float
  trust_ratio: float
  param_norm_after: float
  grad_norm_after: float

  @property
  def ratio(self) -> float:
    """‖w‖/‖g‖ after one iteration (inf where the gradient is 0)."""
    return self.param_norm / self.grad_norm if self.grad_norm else float("inf")

  @property
  def ratio_after(self) -> float:
    """‖w‖/‖g‖ after the K iterations."""
    return self.param_norm_after / self.grad_norm_after if self.grad_norm_after else float("inf")

  @property
  def kind(self) -> str:
    """The leaf's last path component: ``kernel``, ``bias``, ``scale``..."""
    return self.name.rsplit("/", 1)[-1]


def _natural_key(name: str) -> list[Any]:
  """Sorts ``block_2`` before ``block_10``."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def load_batches(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """The digits training split at ``image_size`` (a multiple of 8) with three identical channels."""
  images, labels, _, _ = input_pipeline.load_arrays("digits", image_size=image_size)
  return np.repeat(images, 3, axis=-1), labels


def measure(
  model_name: str,
  *,
  image_size: int,
  batch_size: int,
  steps: int,
  learning_rate: float,
  seed: int = 0,
) -> list[LayerNorms]:
  """Trains ``model_name`` for ``steps`` + 1 LARS steps; returns the norms of every leaf, in layer order.

  Args:
    model_name: a name in ``models.MODELS``.
    image_size: side of the input images (a multiple of 8).
    batch_size: examples per step.
    steps: K ≥ 1; the "after" norms are those after K iterations (read at update K + 1).
    learning_rate: γ of LARS (constant; momentum 0.9, β = 5e-4, η = 0.001).
    seed: initialisation, batches and dropout.

  Raises:
    ValueError: if ``steps`` < 1.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  images, labels = load_batches(image_size)
  model = get_model(model_name, num_classes=10)
  key = jax.random.key(seed)
  variables = model.init(key, jnp.asarray(images[:1]), train=False)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  tx = lars_optax.lars(learning_rate, momentum=0.9, weight_decay=WEIGHT_DECAY)
  opt_state = tx.init(params)
  step = _train_step(model, tx)
  rng = np.random.default_rng(seed)
  for k in range(steps + 1):
    batch = rng.choice(len(labels), batch_size, replace=False)
    dropout = jax.random.fold_in(key, k + 1)
    params, batch_stats, opt_state = step(
      params, batch_stats, opt_state, images[batch], labels[batch], dropout
    )
    diagnostics = jax.device_get(lars_optax.flatten_diagnostics(lars_optax.get_diagnostics(opt_state)))
    if k == 1:  # update 2 reads the weights after one iteration and their gradient.
      first = diagnostics
  return _layer_norms(params, first, diagnostics)


def _train_step(model: Any, tx: optax.GradientTransformation) -> Any:
  """The jitted LARS step: ``(params, batch_stats, opt_state, x, y, rng)`` to the first three, updated."""

  @jax.jit
  def step(params, batch_stats, opt_state, x, y, rng):
    def loss_fn(params):
      variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
      logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng})
      return train_steps.cross_entropy(logits, y, 10).mean(), updates.get("batch_stats", {})

    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  return step


def _layer_norms(params: Any, first: dict[str, Any], last: dict[str, Any]) -> list[LayerNorms]:
  """`LayerNorms` of every leaf, in layer order, from the flat diagnostics after one and after K steps."""
  adapted = lars_optax.flatten_diagnostics(
    lars_optax.TrustRatioDiagnostics(*[lars_optax.rank_mask(params)] * 3)
  )
  shapes = lars_optax.flatten_diagnostics(
    lars_optax.TrustRatioDiagnostics(*[jax.eval_shape(lambda: params)] * 3)
  )
  names = sorted((k.split("/", 1)[1] for k in first if k.startswith("param_norm/")), key=_natural_key)
  return [
    LayerNorms(
      name=name,
      shape=shapes[f"param_norm/{name}"].shape,
      adapted=bool(adapted[f"param_norm/{name}"]),
      param_norm=float(first[f"param_norm/{name}"]),
      grad_norm=float(first[f"grad_norm/{name}"]),
      trust_ratio=float(first[f"trust_ratio/{name}"]),
      param_norm_after=float(last[f"param_norm/{name}"]),
      grad_norm_after=float(last[f"grad_norm/{name}"]),
    )
    for name in names
  ]


def layer_table(rows: Sequence[LayerNorms], steps: int) -> str:
  """One row per leaf: shape, mask, ‖w‖, ‖g‖, ‖w‖/‖g‖ and λ after one iteration; ‖w‖/‖g‖ after more."""
  lines = [
    f"| layer | shape | LARS | ‖w‖ | ‖g‖ | ‖w‖/‖g‖ | ‖w‖/‖g‖ after {steps} iterations | λ |",
    "|---|---|---|---:|---:|---:|---:|---:|",
  ]
  for row in rows:
    shape = "×".join(map(str, row.shape))
    adapted = "adapted" if row.adapted else "excluded"
    lines.append(
      f"| {row.name} | {shape} | {adapted} | {row.param_norm:.3g} | {row.grad_norm:.3g} | "
      f"{row.ratio:.3g} | {row.ratio_after:.3g} | {row.trust_ratio:.3g} |"
    )
  return "\n".join(lines)


def summary_table(results: dict[str, list[LayerNorms]]) -> str:
  """Per model and kind of leaf: the range of ‖w‖/‖g‖ after one iteration and its spread max/min."""
  lines = [
    "| model | leaves | count | min ‖w‖/‖g‖ | median | max | max/min |",
    "|---|---|---:|---:|---:|---:|---:|",
  ]
  for model, rows in results.items():
    for kind in dict.fromkeys(row.kind for row in rows):
      ratios = np.asarray([r.ratio for r in rows if r.kind == kind and 0 < r.ratio < np.inf])
      if not len(ratios):
        continue
      lines.append(
        f"| {model} | {kind} | {len(ratios)} | {ratios.min():.3g} | {np.median(ratios):.3g} | "
        f"{ratios.max():.3g} | {ratios.max() / ratios.min():.3g} |"
      )
  return "\n".join(lines)


def plot(results: dict[str, list[LayerNorms]], steps: int, path: Path) -> None:
  """‖w‖/‖g‖ per leaf (log scale), after one and after ``steps`` iterations; one panel per model."""
  fig, axes = plt.subplots(len(results), 1, figsize=(11, 3.6 * len(results)), squeeze=False)
  for ax, (model, rows) in zip(axes[:, 0], results.items(), strict=True):
    x = np.arange(len(rows))
    adapted = np.asarray([r.adapted for r in rows])
    for values, label, marker in (
      ([r.ratio for r in rows], "after 1 iteration", "o"),
      ([r.ratio_after for r in rows], f"after {steps} iterations", "x"),
    ):
      values = np.asarray(values)
      ax.scatter(x[adapted], values[adapted], marker=marker, label=f"kernels, {label}")
      ax.scatter(x[~adapted], values[~adapted], marker=marker, label=f"biases / BN, {label}")
    ax.set_yscale("log")
    ax.set_ylabel("‖w‖ / ‖g‖")
    ax.set_title(f"{model}: {len(rows)} parameter leaves")
    if len(rows) <= 24:
      ax.set_xticks(x, [r.name for r in rows], rotation=60, ha="right", fontsize=7)
    else:
      ax.set_xlabel("parameter leaf (in layer order)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="+", help="default: alexnet resnet50 (--quick: small ones)")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--learning_rate", type=float, default=2.0, help="LARS γ (paper, AlexNet B=512)")
  parser.add_argument("--quick", action="store_true", help="small_alexnet and resnet20, 32x32, 3 steps")
  parser.add_argument("--output_dir", type=Path, help="default: results/ (--quick: build/)")
  args = parser.parse_args(argv)
  if args.quick:
    args.image_size, args.batch_size, args.steps = 32, 8, 3
  if args.output_dir is None:
    args.output_dir = QUICK_OUTPUT_DIR if args.quick else DEFAULT_OUTPUT_DIR
  elif args.quick and args.output_dir.resolve() == DEFAULT_OUTPUT_DIR:
    parser.error(f"--quick is a smoke test, never written into the committed results {DEFAULT_OUTPUT_DIR}.")
  args.models = args.models or (["small_alexnet", "resnet20"] if args.quick else ["alexnet", "resnet50"])
  return args


def main(argv: Sequence[str]) -> dict[str, Path]:
  """Measures every ``--models`` entry, writes the table and the plot; returns their paths."""
  args = parse_args(argv)
  start = time.perf_counter()
  results = {
    name: measure(
      name,
      image_size=args.image_size,
      batch_size=args.batch_size,
      steps=args.steps,
      learning_rate=args.learning_rate,
    )
    for name in args.models
  }
  args.output_dir.mkdir(parents=True, exist_ok=True)
  stem = "trust_ratios_quick" if args.quick else "trust_ratios"
  paths = {"markdown": args.output_dir / f"{stem}.md", "plot": args.output_dir / f"{stem}.png"}
  setup = (
    f"Digits upscaled to {args.image_size}x{args.image_size}x3, batch {args.batch_size}, LARS γ = "
    f"{args.learning_rate:g} (η = 0.001, β = {WEIGHT_DECAY:g}, momentum 0.9); norms after 1 and after "
    f"{args.steps} iterations; "
    f"{time.perf_counter() - start:.0f} s on {jax.default_backend()}. "
    f"Command: `{shlex.join(['python', '-m', 'experiments.trust_ratios', *argv])}`"
  )
  sections = ["## ‖w‖/‖g‖ per layer", setup, summary_table(results)]
  for name, rows in results.items():
    sections += [f"### {name}", layer_table(rows, args.steps)]
  paths["markdown"].write_text("\n\n".join(sections) + "\n")
  plot(results, args.steps, paths["plot"])
  print(summary_table(results))
  print(f"wrote {paths['markdown']} and {paths['plot']} in {time.perf_counter() - start:.0f} s")
  return paths
