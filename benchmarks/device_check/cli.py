"""One check on an accelerator: the LARS update, ResNet-50 training throughput, gradient accumulation.

Three parts, on the first device JAX sees (``--smoke``: tiny sizes, on the CPU), in this order:

1. **The update** on the ResNet-50 parameter tree (``models.get_model("resnet50")``, shapes via
   ``jax.eval_shape``; 161 leaves, 25,557,032 parameters): one jitted update + ``optax.apply_updates`` with
   donated buffers, for momentum SGD with weight decay (the baseline), ``lars_optax.lars`` (the paper, and
   ``trust_ratio_norm="update"``), ``chain(lars_optax.scale_by_trust_ratio, optax.sgd)`` and ``optax.lars``,
   built by `benchmarks.update_speed.make_optimizers` (same LR, momentum, weight decay and rank mask). Each is
   timed two ways in interleaved rounds (a fresh random order each round, through
   `benchmarks.update_speed.time_interleaved`): *dispatch*, ``--update_inner`` calls of the one-update program
   back to back, the device queue kept full by asynchronous dispatch (what a loop of update calls costs, host
   dispatch included); and *in-program*, ``--update_inner`` updates in one ``lax.fori_loop`` program (device
   time per update, as inside a training step, plus a loop iteration). The one-update programs come first; the
   loop programs are compiled only while ``--update_budget_s`` allows, so that parts 2 and 3 keep their time.
   Per optimizer: the median times, the ratio to SGD, the kernels per update counted from the compiled HLO
   (`benchmarks.hlo_stats.count_kernels` gives the rule), and the bytes moved against a measured copy
   bandwidth (the roofline). Bytes are given two ways: the arithmetic floor (float32: SGD reads w, g, v and
   writes w, v, 20 bytes per parameter; LARS reads w and g once more for the norms, +8 bytes per adapted
   parameter) and XLA's cost-model count of the compiled program (operands and results of every kernel, an
   upper estimate). The copy bandwidth is that of a jitted ``x + 1`` on a ``--copy_mib`` float32 array,
   counting the bytes read and written.
2. **Training throughput**: train.py's own step (`training.steps.Jit`, ``train_step``: forward, backward,
   update, batch-norm statistics) on one device, ResNet-50, bf16 compute with float32 parameters,
   ``--batch_size`` images per device (``--fallback_batch_size`` if that runs out of memory), synthetic
   images and labels made on the device (no input pipeline), LARS (`lars_optax.lars`) against momentum SGD
   with the same weight decay and mask. Images/s from the median step time over interleaved rounds
   (``--train_steps_per_round`` steps of each optimizer per round, a fresh random order each round), the
   ratio LARS / SGD, and the peak device memory (``device.memory_stats()``; None where the backend keeps
   none, as on the CPU) beside the step program's own memory from XLA's memory analysis.
3. **Gradient accumulation** k = ``--accum_steps``: the same step on k micro-batches of ``--batch_size``
   (a k-times larger batch per optimizer step), LARS first, then SGD if time is left: images/s and their
   ratio to part 2's.

It imports only JAX, Optax, Flax, NumPy and this repository's ``lars_optax``, ``models``, ``training.steps``
and ``benchmarks`` (no TensorFlow, TFDS, ml-collections or clu: ``training.optimizers`` needs
ml-collections, so the two optimizers come from `benchmarks.update_speed.make_optimizers`, which builds
them as ``training.optimizers`` does: ``lars_optax.lars`` and ``chain(add_decayed_weights(β, rank mask),
sgd)``). It stops starting new work
once ``--time_budget_s`` (from the start of ``main``, after the imports; compilation included) would be
exceeded, marks what it skipped, and rewrites ``device_check.json`` and ``device_check.md`` in
``--output_dir`` after every part, so that a run cut short still leaves its figures.

Run from the repository root (budgeted to end within 6 minutes on one H200, compilation included; not yet
run on one). Through the device tool, whose command runs in a copy of the repository root and brings back
the folder ``$OUT``:

  python3 -m benchmarks.device_check --output_dir $OUT

On the CPU, all three parts on small_alexnet_bn at 8x8 pixels, in about 30 s (the test suite runs this):

  python -m benchmarks.device_check --smoke --output_dir /tmp/device_check
"""

import argparse
import contextlib
import functools
import gc
import json
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lars_optax
import models
from benchmarks import hlo_stats, update_speed
from training import steps

BASELINE = update_speed.BASELINE  # "sgd"
UPDATE_OPTIMIZERS = (
  BASELINE,
  "lars_optax.lars",
  "lars_optax.lars (update norm)",
  "chain(scale_by_trust_ratio, sgd)",
  "optax.lars",
)
# Part 2 and 3's optimizers: train.py's "lars" and "sgd" (training/optimizers.py) at these settings.
TRAIN_OPTIMIZERS = {"lars": "lars_optax.lars", "sgd": BASELINE}
SGD_BYTES_PER_PARAM = 20  # float32: read w, g, v; write w, v
NORM_BYTES_PER_ADAPTED_PARAM = 8  # LARS: read w and g once more for ‖w‖ and ‖g‖
GOALS = {
  "update_ms": 0.5,  # LARS update at most 0.5 ms ...
  "update_vs_sgd": 1.5,  # ... and at most 1.5x the SGD update
  "update_share_of_step": 0.02,  # above 2% of the SGD step (or 0.5 ms), restructure for fewer kernels
  "images_per_s": 3000.0,  # ResNet-50 bf16 on one H200 (stretch 4,000)
  "images_per_s_stretch": 4000.0,
  "step_vs_sgd": 1.02,  # LARS step at most 1.02x the SGD step
}
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


class Deadline:
  """Seconds left of the budget, counted from the creation of this object."""

  def __init__(self, budget_s: float, start: float | None = None):
    self.budget_s = budget_s
    self.start = time.monotonic() if start is None else start

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def left(self) -> float:
    return self.budget_s - self.elapsed()

  def allows(self, estimate_s: float) -> bool:
    return self.left() >= estimate_s


def environment(device: jax.Device, argv: list[str]) -> dict[str, Any]:
  """The device, the library versions and the command, for the record."""
  return {
    "command": shlex.join(["python3", "-m", "benchmarks.device_check", *argv]),
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


def peak_memory(device: jax.Device) -> dict[str, int] | None:
  """Peak and limit of the device allocator, or None where the backend reports no statistics (CPU)."""
  try:
    stats = device.memory_stats()
  except Exception:  # not implemented on every backend
    return None
  if not stats:
    return None
  return {key: int(stats[key]) for key in ("peak_bytes_in_use", "bytes_limit") if key in stats}


def median_quartiles(times: list[float]) -> dict[str, float]:
  q25, median, q75 = np.percentile(times, [25, 50, 75])
  return {"median_s": float(median), "q25_s": float(q25), "q75_s": float(q75)}


def _repeated(program: Callable[..., Any], inner: int) -> Callable[..., Any]:
  """``inner`` back-to-back calls of a (params, state, grads) -> (params, state) program."""

  def run(params, state, grads):
    for _ in range(inner):
      params, state = program(params, state, grads)
    return params, state

  return run


def compile_loop(opt: optax.GradientTransformation, params: Any, state: Any, grads: Any, inner: int) -> Any:
  """``inner`` updates + apply_updates in one ``lax.fori_loop`` program, parameters and state donated."""

  def loop(params, state, grads):
    def body(_, carry):
      params, state = carry
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    return lax.fori_loop(0, inner, body, (params, state))

  return jax.jit(loop, donate_argnums=(0, 1)).lower(params, state, grads).compile()


def measure_copy_bandwidth(args: argparse.Namespace) -> dict[str, Any]:
  """Bytes read plus written per second by a jitted ``x + 1`` on a float32 array (donated, in place)."""
  n = args.copy_mib * 2**20 // 4
  add_one = jax.jit(lambda x: x + 1.0, donate_argnums=0).lower(jax.ShapeDtypeStruct((n,), jnp.float32))
  add_one = add_one.compile()
  x = jax.random.normal(jax.random.key(args.seed), (n,), jnp.float32)
  for _ in range(3):
    x = add_one(x)
  x.block_until_ready()
  times = []
  for _ in range(args.copy_repetitions):
    start = time.perf_counter()
    for _ in range(args.update_inner):
      x = add_one(x)
    x.block_until_ready()
    times.append((time.perf_counter() - start) / args.update_inner)
  moved = 2 * 4 * n
  median = float(np.median(times))
  return {"bytes_per_copy": moved, "times_s": times, "median_s": median, "bytes_per_s": moved / median}


def _time_modes(
  result: dict[str, Any],
  mode: str,
  programs: dict[str, Callable[..., Any]],
  carries: dict[str, tuple[Any, Any]],
  grads: Any,
  args: argparse.Namespace,
) -> None:
  """Times ``programs`` (each runs ``--update_inner`` updates) interleaved; stores per-update figures."""
  timings = update_speed.time_interleaved(
    programs, carries, grads, repetitions=args.update_repetitions, warmup=args.update_warmup, seed=args.seed
  )
  sgd_median = float(np.median(timings.wall[BASELINE])) / args.update_inner
  for name, wall in timings.wall.items():
    times = [float(t) / args.update_inner for t in wall]
    entry = {"times_s": times, **median_quartiles(times)}
    entry["ratio_to_sgd"] = entry["median_s"] / sgd_median
    entry["ratio_to_sgd_per_round"] = float(np.median(np.asarray(wall) / timings.wall[BASELINE]))
    result["optimizers"][name][mode] = entry


def update_part(args: argparse.Namespace, bandwidth: float | None, deadline: Deadline) -> dict[str, Any]:
  """Part 1: the optimizer update on the model's parameter tree (see the module docstring).

  The one-update programs (kernel counts, *dispatch* times) come first; the ``fori_loop`` programs
  (*in-program* times) are compiled only while ``--update_budget_s`` allows, so that the training parts
  keep their time.
  """
  shapes = update_speed.model_param_shapes(args.model, args.image_size)
  leaves = jax.tree.leaves(shapes)
  adapted = jax.tree.leaves(lars_optax.rank_mask(shapes))
  num_params = sum(int(np.prod(leaf.shape)) for leaf in leaves)
  num_adapted = sum(int(np.prod(leaf.shape)) for leaf, a in zip(leaves, adapted, strict=True) if a)
  all_optimizers = update_speed.make_optimizers(shapes, learning_rate=0.1, weight_decay=1e-4, momentum=0.9)
  optimizers = {name: all_optimizers[name] for name in UPDATE_OPTIMIZERS}

  keys = iter(jax.random.split(jax.random.key(args.seed), 2 * len(leaves)))
  params = jax.tree.map(lambda leaf: 0.05 * jax.random.normal(next(keys), leaf.shape, leaf.dtype), shapes)
  grads = jax.tree.map(lambda leaf: 1e-3 * jax.random.normal(next(keys), leaf.shape, leaf.dtype), shapes)

  result: dict[str, Any] = {
    "model": args.model,
    "num_leaves": len(leaves),
    "num_params": num_params,
    "num_adapted_params": num_adapted,
    "repetitions": args.update_repetitions,
    "inner": args.update_inner,
    "skipped": [],
    "optimizers": {},
  }
  update_deadline = Deadline(min(args.update_budget_s, args.time_budget_s), start=deadline.start)

  def own_copy(opt: optax.GradientTransformation) -> tuple[Any, Any]:
    # Each program donates its own buffers. ``init`` under jit: eager ``lars_optax`` init shares one zero
    # buffer among its diagnostics, which a program that reads the state cannot take donated twice.
    own = jax.tree.map(jnp.copy, params)
    return own, jax.jit(opt.init)(own)

  dispatch, carries, estimate = {}, {}, 0.0
  for name, opt in optimizers.items():
    if not update_deadline.allows(2 * estimate + 5):
      result["skipped"].append(
        f"{name}: not compiled, {update_deadline.left():.0f} s of the update budget left"
      )
      continue
    carries[name] = own_copy(opt)
    start = time.perf_counter()
    compiled = update_speed.compile_step(opt, *carries[name], grads)
    compile_s = time.perf_counter() - start
    estimate = max(estimate, compile_s)
    kernels = hlo_stats.count_kernels(compiled.as_text())
    floor = SGD_BYTES_PER_PARAM * num_params
    if name != BASELINE:
      floor += NORM_BYTES_PER_ADAPTED_PARAM * num_adapted
    result["optimizers"][name] = {
      "compile_s": compile_s,
      "kernels": kernels.kernels,
      "fusions": kernels.fusions,
      "custom_calls": kernels.custom_calls,
      "command_buffers": kernels.command_buffers,
      "kernels_by_opcode": kernels.by_opcode,
      "temp_bytes": (hlo_stats.program_bytes(compiled) or {}).get("temporaries"),
      "bytes_floor": floor,
      "bytes_xla": hlo_stats.bytes_accessed(compiled),
    }
    dispatch[name] = _repeated(compiled, args.update_inner)
  if BASELINE not in dispatch:
    return result
  _time_modes(result, "dispatch", dispatch, carries, grads, args)
  del dispatch, carries

  loops, loop_carries = {}, {}
  for name in result["optimizers"]:
    if not update_deadline.allows(2 * estimate + 5):
      result["skipped"].append(
        f"{name}: in-program loop not compiled, {update_deadline.left():.0f} s of the update budget left"
      )
      continue
    loop_carries[name] = own_copy(optimizers[name])
    start = time.perf_counter()
    loops[name] = compile_loop(optimizers[name], *loop_carries[name], grads, args.update_inner)
    estimate = max(estimate, time.perf_counter() - start)
  if BASELINE in loops:
    _time_modes(result, "in_program", loops, loop_carries, grads, args)
  for figures in result["optimizers"].values():
    median = figures.get("in_program", figures["dispatch"])["median_s"]
    for kind in ("floor", "xla"):
      moved = figures[f"bytes_{kind}"]
      roofline = moved / bandwidth if bandwidth and moved else None
      figures[f"roofline_{kind}_s"] = roofline
      figures[f"roofline_{kind}_fraction"] = roofline / median if roofline else None
  return result


def synthetic_batch(device: jax.Device, batch: int, image_size: int, dtype: Any, seed: int) -> dict:
  """Random images (``dtype``) and labels, made on the device: no host transfer, no input pipeline."""
  sharding = NamedSharding(jax.sharding.Mesh(np.asarray([device]), ("data",)), P("data"))

  @functools.partial(jax.jit, out_shardings=sharding)
  def make(key):
    image_key, label_key = jax.random.split(key)
    images = jax.random.normal(image_key, (batch, image_size, image_size, 3), dtype)
    return {"image": images, "label": jax.random.randint(label_key, (batch,), 0, 1000)}

  return make(jax.random.key(seed))


def build_train_step(
  name: str, args: argparse.Namespace, device: jax.Device, batch_size: int, accum_steps: int
) -> tuple[Any, steps.TrainState, dict, dict[str, Any]]:
  """train.py's jit step for one optimizer, compiled; its state, a batch and what XLA made of it."""
  dtype = jnp.dtype(args.dtype)
  model = models.get_model(args.model, num_classes=1000, dtype=dtype)
  schedule = lars_optax.warmup_polynomial_decay(1.0, total_steps=1000, warmup_steps=100)
  shapes = jax.eval_shape(
    functools.partial(model.init, train=False),
    jax.random.key(0),
    jnp.zeros((1, args.image_size, args.image_size, 3), jnp.float32),
  )["params"]
  opt = update_speed.make_optimizers(shapes, learning_rate=schedule, weight_decay=5e-4, momentum=0.9)
  tx = opt[TRAIN_OPTIMIZERS[name]]
  config = steps.StepConfig(
    model=model, tx=tx, learning_rate_fn=schedule, num_classes=1000, grad_accum_steps=accum_steps
  )
  parallel = steps.Jit(config, sync_batch_norm=True, devices=[device])
  state = steps.create_train_state(model, tx, seed=args.seed, input_shape=(args.image_size,) * 2 + (3,))
  state = parallel.place_state(state)
  batch = synthetic_batch(device, batch_size * accum_steps, args.image_size, dtype, args.seed)
  start = time.perf_counter()
  compiled = parallel.train_step.lower(state, batch).compile()
  kernels = hlo_stats.count_kernels(compiled.as_text())
  info = {
    "compile_s": time.perf_counter() - start,
    "kernels": kernels.kernels,
    "fusions": kernels.fusions,
    "custom_calls": kernels.custom_calls,
    "program_bytes": hlo_stats.program_bytes(compiled),
  }
  return compiled, state, batch, info


def _is_out_of_memory(error: Exception) -> bool:
  text = str(error).lower()
  return "resource_exhausted" in text or "out of memory" in text


def time_train_steps(
  runs: dict[str, list],
  *,
  rounds: int,
  steps_per_round: int,
  warmup: int,
  seed: int,
  deadline: Deadline,
) -> dict[str, list[float]]:
  """Seconds per step of each run, one entry per round; each round runs every optimizer in a new order.

  ``runs[name]`` is ``[compiled step, state, batch]``; the state is donated and replaced at each step.
  Rounds stop early when the budget runs out (at least one is always timed).
  """

  def run(name: str, count: int) -> None:
    if not count:
      return
    for _ in range(count):
      step, state, batch = runs[name]
      state, metrics = step(state, batch)
      runs[name][1] = state
    jax.block_until_ready((runs[name][1], metrics))

  names = list(runs)
  for name in names:
    run(name, warmup)
  rng = np.random.default_rng(seed)
  times: dict[str, list[float]] = {name: [] for name in names}
  round_s = 0.0
  for round_index in range(rounds):
    if round_index and not deadline.allows(round_s + 5):
      break
    round_start = time.perf_counter()
    for name in rng.permutation(names):
      start = time.perf_counter()
      run(name, steps_per_round)
      times[name].append((time.perf_counter() - start) / steps_per_round)
    round_s = time.perf_counter() - round_start
  return times


def train_part(
  args: argparse.Namespace,
  device: jax.Device,
  *,
  accum_steps: int,
  batch_size: int,
  rounds: int,
  steps_per_round: int,
  order: tuple[str, ...],
  deadline: Deadline,
  compile_estimate: float,
) -> dict[str, Any]:
  """Parts 2 and 3: the training step of each optimizer in ``order``, compiled, then timed interleaved."""
  result: dict[str, Any] = {
    "grad_accum_steps": accum_steps,
    "per_device_batch": batch_size,
    "images_per_step": batch_size * accum_steps,
    "steps_per_round": steps_per_round,
    "skipped": [],
    "optimizers": {},
  }
  runs = {}
  for name in order:
    # A compile and the timing that follows it. The estimate is the latest compile's time: later ones reuse
    # XLA's autotuning results for the same convolutions and are faster than the first.
    if not deadline.allows(compile_estimate * 1.2 + 10):
      result["skipped"].append(f"{name}: not compiled, {deadline.left():.0f} s of the budget left")
      continue
    compiled, state, batch, info = build_train_step(name, args, device, batch_size, accum_steps)
    compile_estimate = info["compile_s"]
    runs[name] = [compiled, state, batch]
    result["optimizers"][name] = info
  if not runs:
    return result
  times = time_train_steps(
    runs,
    rounds=rounds,
    steps_per_round=steps_per_round,
    warmup=args.train_warmup,
    seed=args.seed,
    deadline=deadline,
  )
  result["rounds"] = len(next(iter(times.values())))
  for name, per_step in times.items():
    entry = result["optimizers"][name]
    entry.update({"times_s": per_step, **median_quartiles(per_step)})
    entry["images_per_s"] = result["images_per_step"] / entry["median_s"]
  if {"lars", "sgd"} <= set(times):
    lars, sgd = result["optimizers"]["lars"], result["optimizers"]["sgd"]
    result["lars_over_sgd"] = lars["median_s"] / sgd["median_s"]
    result["lars_over_sgd_per_round"] = float(np.median(np.asarray(times["lars"]) / np.asarray(times["sgd"])))
  result["peak_memory"] = peak_memory(device)
  result["compile_estimate_s"] = compile_estimate
  del runs
  gc.collect()
  return result


def goal_lines(results: dict[str, Any]) -> list[str]:
  """The issue's goals, each with its figure and met / NOT met (meaningful only on the accelerator)."""
  lines = []

  def check(text: str, value: float | None, limit: float, at_most: bool = True) -> None:
    if value is None:
      lines.append(f"{text}: not measured")
    else:
      met = value <= limit if at_most else value >= limit
      lines.append(
        f"{text}: {value:.4g} (goal {'<=' if at_most else '>='} {limit:g}: {'met' if met else 'NOT met'})"
      )

  update = (results.get("update") or {}).get("optimizers", {})
  lars = update.get("lars_optax.lars", {})
  mode = "in_program" if "in_program" in lars else "dispatch"
  lars_update = lars.get(mode)
  label = mode.replace("_", "-")
  check(f"LARS update, {label} (ms)", lars_update and 1e3 * lars_update["median_s"], GOALS["update_ms"])
  check(
    f"LARS update / SGD update, {label}", lars_update and lars_update["ratio_to_sgd"], GOALS["update_vs_sgd"]
  )
  train = results.get("train") or {}
  sgd_step = train.get("optimizers", {}).get("sgd", {}).get("median_s")
  share = lars_update["median_s"] / sgd_step if lars_update and sgd_step else None
  check("LARS update / SGD training step", share, GOALS["update_share_of_step"])
  lars_train = train.get("optimizers", {}).get("lars", {})
  check("LARS training, images/s", lars_train.get("images_per_s"), GOALS["images_per_s"], at_most=False)
  check(
    "LARS training, images/s (stretch)", lars_train.get("images_per_s"), GOALS["images_per_s_stretch"], False
  )
  check("LARS step / SGD step", train.get("lars_over_sgd"), GOALS["step_vs_sgd"])
  return lines


def _ms(seconds: float | None) -> str:
  return "-" if seconds is None else f"{1e3 * seconds:.3f}"


def markdown(results: dict[str, Any]) -> str:
  """The figures of ``results`` as a short report."""
  env = results["environment"]
  lines = [
    "# Device check"
    + (" (smoke mode: tiny sizes on the CPU, figures not meaningful)" if results["smoke"] else ""),
    "",
    f"Device: {env['device_kind']} ({env['platform']}, {env['device_count']} device(s)); jax {env['jax']}, "
    f"jaxlib {env['jaxlib']}, optax {env['optax']}, flax {env['flax']}, lars_optax {env['lars_optax']}, "
    f"numpy {env['numpy']}, python {env['python']}.",
    f"Command: `{env['command']}`; {results['elapsed_s']:.0f} s of a {results['time_budget_s']:.0f} s "
    "budget.",
    "",
  ]
  copy = results.get("copy_bandwidth")
  if copy:
    lines += [
      f"Copy bandwidth (jitted x + 1, {copy['bytes_per_copy'] / 2**20:.0f} MiB read + written): "
      f"{copy['bytes_per_s'] / 1e9:.1f} GB/s.",
      "",
    ]
  update = results.get("update")
  if update:
    lines += [
      f"## Update on the {update['model']} parameter tree",
      "",
      f"{update['num_leaves']} leaves, {update['num_params']:,} float32 parameters "
      f"({update['num_adapted_params']:,} adapted); {update['repetitions']} interleaved rounds of "
      f"{update['inner']} updates; roofline fractions against the in-program time (the dispatch time "
      "where that was skipped). Bytes: floor = arithmetic (20 B/parameter, +8 B/adapted parameter "
      "for the norms), XLA = the compiled program's cost analysis; roofline = bytes / copy bandwidth.",
      "",
      "| optimizer | in-program (ms) | x SGD | dispatch (ms) | x SGD | kernels (fusions, custom calls) "
      "| MB floor / XLA | roofline floor (ms) | floor / time |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, fig in update["optimizers"].items():
      if "dispatch" not in fig:
        continue
      xla = "-" if fig["bytes_xla"] is None else f"{fig['bytes_xla'] / 1e6:.0f}"
      fraction = fig["roofline_floor_fraction"]
      loop = fig.get("in_program")
      loop_ratio = f"{loop['ratio_to_sgd']:.2f}" if loop else "-"
      lines.append(
        f"| {name} | {_ms(loop and loop['median_s'])} | {loop_ratio} "
        f"| {_ms(fig['dispatch']['median_s'])} | {fig['dispatch']['ratio_to_sgd']:.2f} "
        f"| {fig['kernels']} ({fig['fusions']}, {fig['custom_calls']}) "
        f"| {fig['bytes_floor'] / 1e6:.0f} / {xla} | {_ms(fig['roofline_floor_s'])} "
        f"| {'-' if fraction is None else f'{fraction:.2f}'} |"
      )
    lines += [f"- skipped: {item}" for item in update["skipped"]] + [""]
  for key, title in (
    ("train", "Training step"),
    ("accumulation", "Training step with gradient accumulation"),
  ):
    part = results.get(key)
    if not part:
      continue
    lines += [
      f"## {title} (k = {part['grad_accum_steps']})",
      "",
      f"{results['train_setup']}; {part['per_device_batch']} images per micro-batch, "
      f"{part['images_per_step']} per step; {part.get('rounds', 0)} interleaved rounds of "
      f"{part['steps_per_round']} steps. Peak device memory: {_bytes(part.get('peak_memory'))}.",
      "",
      "| optimizer | median step (ms) | IQR (ms) | images/s | compile (s) | kernels | program memory (GB) |",
      "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, fig in part["optimizers"].items():
      if "median_s" not in fig:
        continue
      memory = (fig.get("program_bytes") or {}).get("total")
      lines.append(
        f"| {name} | {_ms(fig['median_s'])} | {_ms(fig['q75_s'] - fig['q25_s'])} | {fig['images_per_s']:.1f} "
        f"| {fig['compile_s']:.1f} | {fig['kernels']} | {'-' if memory is None else f'{memory / 1e9:.2f}'} |"
      )
    if "lars_over_sgd" in part:
      lines.append(
        f"\nLARS / SGD step: {part['lars_over_sgd']:.3f} (median of per-round ratios "
        f"{part['lars_over_sgd_per_round']:.3f})."
      )
    for name, ratio in part.get("images_per_s_vs_k1", {}).items():
      lines.append(f"\n{name}: images/s at k = {part['grad_accum_steps']} / at k = 1: {ratio:.3f}.")
    lines += [f"- skipped: {item}" for item in part["skipped"]] + [""]
  lines += ["## Goals", ""] + [f"- {line}" for line in results["goals"]]
  lines += [f"- error: {error}" for error in results["errors"]]
  return "\n".join(lines) + "\n"


def _bytes(memory: dict[str, int] | None) -> str:
  if not memory or "peak_bytes_in_use" not in memory:
    return "not reported by this backend"
  return f"{memory['peak_bytes_in_use'] / 1e9:.2f} GB"


def write(results: dict[str, Any], output_dir: Path, deadline: Deadline) -> None:
  """(Re)writes device_check.json and device_check.md with what has been measured so far."""
  results["elapsed_s"] = deadline.elapsed()
  results["goals"] = goal_lines(results)
  output_dir.mkdir(parents=True, exist_ok=True)
  (output_dir / "device_check.json").write_text(json.dumps(results, indent=1) + "\n")
  (output_dir / "device_check.md").write_text(markdown(results))


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--output_dir", type=Path, required=True)
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
  parser.add_argument("--update_inner", type=int, default=20, help="updates per timing (see docstring)")
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
    "compute, "
    "float32 parameters, train.py's jit step on one device, LARS vs momentum SGD (weight decay 5e-4)",
    "errors": [],
  }

  def guarded(part: str, function: Callable[[], Any]) -> Any:
    """``results[part] = function()`` (None if it raised: the error is recorded), then the files rewritten."""
    results[part] = None
    try:
      results[part] = function()
    except Exception as error:  # record it, keep the other parts' figures
      results["errors"].append(f"{part}: {type(error).__name__}: {str(error)[:2000]}")
      traceback.print_exc()
    write(results, args.output_dir, deadline)
    return results[part]

  # Smoke mode runs on the CPU even where an accelerator is the default device.
  on_device = jax.default_device(device) if hasattr(jax, "default_device") else contextlib.nullcontext()
  with on_device:
    copy = guarded("copy_bandwidth", lambda: measure_copy_bandwidth(args))
    bandwidth = copy["bytes_per_s"] if copy else None
    guarded("update", lambda: update_part(args, bandwidth, deadline))
    gc.collect()

    def train(batch_size: int) -> dict[str, Any]:
      return train_part(
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
        if not _is_out_of_memory(error):
          raise
        gc.collect()
        part = train(args.fallback_batch_size)
        part["fallback_reason"] = f"batch {args.batch_size} ran out of memory: {str(error)[:500]}"
        return part

    guarded("train", train_with_fallback)
    gc.collect()
    batch_size = results["train"]["per_device_batch"] if results["train"] else args.batch_size

    def accumulation() -> dict[str, Any]:
      part = train_part(
        args,
        device,
        accum_steps=args.accum_steps,
        batch_size=batch_size,
        rounds=args.accum_rounds,
        steps_per_round=args.accum_steps_per_round,
        order=("lars", "sgd"),
        deadline=deadline,
        compile_estimate=(results["train"] or {}).get("compile_estimate_s", args.train_compile_estimate_s),
      )
      base = (results["train"] or {}).get("optimizers", {})
      part["images_per_s_vs_k1"] = {
        name: fig["images_per_s"] / base[name]["images_per_s"]
        for name, fig in part["optimizers"].items()
        if "images_per_s" in fig and "images_per_s" in base.get(name, {})
      }
      return part

    guarded("accumulation", accumulation)
  print(markdown(results))
  return results


if __name__ == "__main__":
  main()
