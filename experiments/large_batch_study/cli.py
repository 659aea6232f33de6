"""The command line of the large-batch study (`experiments.large_batch_study.study`): runs it, writes reports.

From the repository root:

  python -m experiments.large_batch_study                  # digits and MNIST-1D: the committed results
  python -m experiments.large_batch_study --quick          # a smoke test, written to build/
  python -m experiments.large_batch_study --dataset cifar10 --data_dir ~/tensorflow_datasets

``--dataset`` takes "digits", "mnist1d" or any prepared TFDS image-classification data set of fixed-size
images (nothing is downloaded); ``--model`` a no-BN model with a batch-norm twin in ``models.MODELS``.
Outputs in ``--output_dir`` (default: ``experiments/large_batch_study/results/``; with ``--quick``,
``build/large_batch_study_quick/``): ``study_summary.json`` (checked by `schema.validate`) and per data set
``study_<dataset>.md`` (tables), ``study_<dataset>.json`` (every run) and two plots,
``study_<dataset>_accuracy_vs_batch.png`` and ``study_<dataset>_epochs.png``. ``--quick`` writes
``study_quick_*`` files whose reports start by saying that they are a smoke test, not the study's result.
"""

import argparse
import json
import os
import platform
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import jax

from experiments.large_batch_study import report, schema, settings, study

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
QUICK_OUTPUT_DIR = HERE.parents[1] / "build" / "large_batch_study_quick"
COMMAND = ("python", "-m", "experiments.large_batch_study")


def machine() -> str:
  """The processor, its core count and the software versions."""
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  software = f"{jax.default_backend()}, jax {jax.__version__}, Python {platform.python_version()}"
  return f"{cpu}, {os.cpu_count()} cores, {software}"


def summary(results: Sequence[dict], command: str, wall_minutes: float) -> dict:
  """``study_summary.json``: the accuracies of every contender, model and batch (`schema.validate`)."""
  datasets = {}
  for r in results:
    models = {}
    for name, model in r["models"].items():
      batches = [
        {
          "batch_size": b["batch_size"],
          "steps": b["steps"],
          "test_accuracy": {
            c: {k: b["test_accuracy"][c][k] for k in ("mean", "std", "lr")} for c in study.CONTENDERS
          },
        }
        for b in model["batches"]
      ]
      models[name] = {"batch_norm": model["batch_norm"], "batches": batches}
    datasets[r["dataset"]] = {"models": models}
  return {"command": command, "wall_minutes": wall_minutes, "machine": machine(), "datasets": datasets}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog=shlex.join(COMMAND), description=study.__doc__.split("\n\n")[0], allow_abbrev=False
  )
  parser.add_argument(
    "--dataset",
    action="append",
    help="digits, mnist1d or a prepared TFDS data set; repeat for several (default: digits and mnist1d; "
    "--quick: digits)",
  )
  parser.add_argument("--model", choices=settings.model_pairs(), help="default: the data set's own")
  parser.add_argument("--data_dir", help="TFDS data directory (MNIST-1D: its cache)")
  parser.add_argument("--quick", action="store_true", help="smoke test: tiny settings, not the result")
  parser.add_argument("--num_seeds", type=int)
  parser.add_argument("--output_dir", type=Path, help="default: results/ (--quick: build/)")
  parser.add_argument("--runs_per_call", type=int, help="runs per vmapped step; default 1 on CPU")
  args = parser.parse_args(argv)
  if args.output_dir is None:
    args.output_dir = QUICK_OUTPUT_DIR if args.quick else RESULTS_DIR
  elif args.quick and args.output_dir.resolve() == RESULTS_DIR:
    parser.error(f"--quick writes a smoke test, never into the committed results {RESULTS_DIR}.")
  datasets = args.dataset or (["digits"] if args.quick else list(settings.BUILTINS))
  try:
    args.settings = [
      settings.settings_for(
        d, model=args.model, data_dir=args.data_dir, quick=args.quick, num_seeds=args.num_seeds
      )
      for d in datasets
    ]
  except (ValueError, FileNotFoundError) as error:
    parser.error(str(error))
  return args


def write(results: list[dict], args: argparse.Namespace, command: str, wall_minutes: float) -> dict:
  """The summary first, then each data set's record, tables and plots; returns their paths."""
  record = summary(results, command, round(wall_minutes, 2))
  schema.validate(record)
  prefix = "study_quick" if args.quick else "study"
  args.output_dir.mkdir(parents=True, exist_ok=True)
  paths = {"summary": args.output_dir / f"{prefix}_summary.json"}
  paths["summary"].write_text(json.dumps(record, indent=1) + "\n")
  for r in results:
    paths |= report.write(args.output_dir, f"{prefix}_{r['dataset']}", r, record)
  return paths


def main(argv: Sequence[str]) -> dict[str, Path]:
  """Runs the study and writes its outputs; returns their paths."""
  args = parse_args(argv)
  start = time.perf_counter()
  results = []
  for s in args.settings:
    result = study.run_dataset(s, args.runs_per_call, log=lambda m: print(m, flush=True))
    results.append(result | {"smoke_test": args.quick})
  wall_minutes = (time.perf_counter() - start) / 60
  paths = write(results, args, shlex.join([*COMMAND, *argv]), wall_minutes)
  if args.quick:
    print(report.SMOKE_TEST)
  print(f"Total: {wall_minutes:.1f} min; wrote {', '.join(str(p) for p in paths.values())}")
  return paths
