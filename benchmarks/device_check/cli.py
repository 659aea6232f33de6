"""The command line of the device check: runs its three parts within a time budget, writes the report.

Run from the repository root (a GPU or TPU machine needs a copy of the checkout with jax, flax, optax and
numpy installed; nothing of TensorFlow, TFDS, ml-collections or clu is imported):

  python -m benchmarks.device_check                        # writes build/device_check/
  python -m benchmarks.device_check --smoke --output_dir /tmp/device_check    # tiny, on the CPU

The parts, on the first device JAX sees (``--smoke``: tiny sizes, on the CPU), in this order: the copy
bandwidth and the optimizer update on the ResNet-50 parameter tree (`benchmarks.device_check.update`);
train.py's training step, LARS against momentum SGD, and the same step with gradient accumulation
(`benchmarks.device_check.training_step`). It stops starting new work once ``--time_budget_s`` (from the
start of `main`, after the imports; compilation included) would be exceeded, marks what it skipped, and
rewrites ``device_check.json`` and ``device_check.md`` in ``--output_dir`` after every part, so that a run
cut short still leaves its figures (`benchmarks.device_check.report`).
"""

import argparse
import contextlib
import gc
import platform
import shlex
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jaxlib
import numpy as np
import optax

import lars_optax
from benchmarks.device_check import report, training_step, update
from benchmarks.device_check.timing import Deadline

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parents[2] / "build" / "device_check"
SMOKE = dict(
  model="small_alexnet_bn",
  image_size=8,
  batch_size=2,
  fallback_batch_size=1,
  accum_steps=4,
  update_repetitions=3,
  update_inner=2,
  update_warmup=1,
  copy_mib=1,
  train_rounds=2,
  train_steps_per_round=1,
  accum_rounds=1,
  accum_steps_per_round=1,
  train_warmup=1,
  train_compile_estimate_s=5.0,
  time_budget_s=900.0,  # a safety net only: the test suite expects every part, even on a loaded machine
  update_budget_s=900.0,
)


def environment(device: jax.Device, argv: list[str]) -> dict[str, Any]:
  """The device, the library versions and the command, for the record."""
  return {
    "command": shlex.join(["python", "-m", "benchmarks.device_check", *argv]),
    "device_kind": device.device_kind,
    "platform": device.platform,
    "device_count": jax.device_count(device.platform),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "optax": optax.__version__,
    "flax": flax.__version__,
    "lars_optax": lars_optax.__version__,
    "numpy": np.__version__,
    "python": platform.python_version(),
    "machine": platform.machine(),
    "platform_version": _platform_version(device),
  }


def _platform_version(device: jax.Device) -> str | None:
  """The backend's own version string (on GPU it names the CUDA and cuDNN versions), where exposed."""
  try:
    return str(device.client.platform_version)
  except Exception:  # not every jax version exposes the client
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.device_check", description=__doc__.split("\n\n")[0], allow_abbrev=False
  )
  parser.add_argument(
    "--output_dir", type=Path, default=DEFAULT_OUTPUT_DIR, help="default: build/device_check"
  )
  parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (the test suite's mode)")
  parser.add_argument("--time_budget_s", type=float, default=300.0, help="no new work after this")
  parser.add_argument("--model", default="resnet50")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--dtype", default="bfloat16", help="compute dtype (parameters stay float32)")
  parser.add_argument("--batch_size", type=int, default=256, help="per device (the micro-batch for k > 1)")
  parser.add_argument(
    "--fallback_batch_size", type=int, default=128, help="if --batch_size runs out of memory"
  )
  parser.add_argument("--accum_steps", type=int, default=4, help="k of part 3")
  parser.add_argument(
    "--update_budget_s", type=float, default=110.0, help="no update compilation after this (from the start)"
  )
  parser.add_argument("--update_repetitions", type=int, default=30)
  parser.add_argument("--update_inner", type=int, default=20, help="updates per timing (see update.py)")
  parser.add_argument("--update_warmup", type=int, default=2)
  parser.add_argument("--copy_mib", type=int, default=1024, help="size of the bandwidth probe's array")
  parser.add_argument("--copy_repetitions", type=int, default=10)
  parser.add_argument("--train_rounds", type=int, default=8)
  parser.add_argument("--train_steps_per_round", type=int, default=5)
  parser.add_argument("--accum_rounds", type=int, default=4)
  parser.add_argument("--accum_steps_per_round", type=int, default=2)
  parser.add_argument("--train_warmup", type=int, default=2)
  parser.add_argument(
    "--train_compile_estimate_s", type=float, default=60.0, help="assumed before the first step compiles"
  )
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.smoke:
    explicit = {arg.split("=")[0].lstrip("-") for arg in argv if arg.startswith("--")}
    for key, value in SMOKE.items():
      if key not in explicit:
        setattr(args, key, value)
  return args


def _train_parts(args: argparse.Namespace, device: jax.Device, deadline: Deadline, results: dict) -> dict:
  """Parts 2 and 3 as ``{part: thunk}``; part 3 reads part 2's batch size and images/s from ``results``."""

  def train(batch_size: int) -> dict[str, Any]:
    return training_step.train_part(
      args,
      device,
      accum_steps=1,
      batch_size=batch_size,
      rounds=args.train_rounds,
      steps_per_round=args.train_steps_per_round,
      order=("sgd", "lars"),
      deadline=deadline,
      compile_estimate=args.train_compile_estimate_s,
    )

  def train_with_fallback() -> dict[str, Any]:
    try:
      return train(args.batch_size)
    except Exception as error:
      if not training_step.is_out_of_memory(error):
        raise
      gc.collect()
      part = train(args.fallback_batch_size)
      part["fallback_reason"] = f"batch {args.batch_size} ran out of memory: {str(error)[:500]}"
      return part

  def accumulation() -> dict[str, Any]:
    base = results["train"] or {}
    part = training_step.train_part(
      args,
      device,
      accum_steps=args.accum_steps,
      batch_size=base.get("per_device_batch", args.batch_size),
      rounds=args.accum_rounds,
      steps_per_round=args.accum_steps_per_round,
      order=("lars", "sgd"),
      deadline=deadline,
      compile_estimate=base.get("compile_estimate_s", args.train_compile_estimate_s),
    )
    k1 = base.get("optimizers", {})
    part["images_per_s_vs_k1"] = {
      name: fig["images_per_s"] / k1[name]["images_per_s"]
      for name, fig in part["optimizers"].items()
      if "images_per_s" in fig and "images_per_s" in k1.get(name, {})
    }
    return part

  return {"train": train_with_fallback, "accumulation": accumulation}


def main(argv: list[str] | None = None) -> dict[str, Any]:
  """Runs the three parts within the budget; returns the results also written to ``--output_dir``."""
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  deadline = Deadline(args.time_budget_s)
  device = jax.devices("cpu")[0] if args.smoke else jax.devices()[0]
  results: dict[str, Any] = {
    "smoke": args.smoke,
    "time_budget_s": args.time_budget_s,
    "environment": environment(device, argv),
    "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    "train_setup": f"{args.model}, {args.image_size}x{args.image_size} synthetic images, {args.dtype} "
    "compute, float32 parameters, train.py's jit step on one device, LARS vs momentum SGD "
    "(weight decay 5e-4)",
    "errors": [],
  }

  def guarded(part: str, function: Callable[[], Any]) -> None:
    """``results[part] = function()`` (None if it raised: the error is recorded), then the files rewritten."""
    results[part] = None
    try:
      results[part] = function()
    except Exception as error:  # record it, keep the other parts' figures
      results["errors"].append(f"{part}: {type(error).__name__}: {str(error)[:2000]}")
      traceback.print_exc()
    report.write(results, args.output_dir, deadline)
    gc.collect()

  # Smoke mode runs on the CPU even where an accelerator is the default device.
  on_device = jax.default_device(device) if hasattr(jax, "default_device") else contextlib.nullcontext()
  with on_device:
    guarded("copy_bandwidth", lambda: update.measure_copy_bandwidth(args))
    bandwidth = (results["copy_bandwidth"] or {}).get("bytes_per_s")
    guarded("update", lambda: update.update_part(args, bandwidth, deadline))
    for part, thunk in _train_parts(args, device, deadline, results).items():
      guarded(part, thunk)
  print(report.markdown(results))
  print(f"Wrote {args.output_dir / 'device_check.json'} and {args.output_dir / 'device_check.md'}")
  return results
