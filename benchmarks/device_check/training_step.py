"""Parts 2 and 3: train.py's training step with LARS against momentum SGD, and with gradient accumulation.

train.py's own step (`training.steps`: forward, backward, update, batch-norm statistics) on one device,
``--model`` with ``--dtype`` compute and float32 parameters, ``--batch_size`` images per device (part 2
falls back to ``--fallback_batch_size`` if that runs out of memory), synthetic images and labels made on
the device (no input pipeline). Images/s from the median step time over interleaved rounds (a fresh random
order each round), the ratio LARS / SGD, and the peak device memory (``device.memory_stats()``; None where
the backend keeps none, as on the CPU) beside the step program's own memory from XLA's memory analysis.
Part 3 runs the same step on k = ``--accum_steps`` micro-batches of ``--batch_size`` (a k-times larger
batch per optimizer step), LARS first, then SGD if time is left.

The optimizers come from `benchmarks.update_speed.make_optimizers`, which builds them as
``training.optimizers`` does (``lars_optax.lars``, and ``chain(add_decayed_weights(β, rank mask), sgd)``)
without its ml-collections import.
"""

import argparse
import functools
import gc
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lars_optax
import models
from benchmarks import hlo_stats, update_speed
from benchmarks.device_check.timing import Deadline, median_quartiles
from training import steps

# train.py's "lars" and "sgd" (training/optimizers.py): their names in `update_speed.make_optimizers`.
TRAIN_OPTIMIZERS = {"lars": "lars_optax.lars", "sgd": update_speed.BASELINE}


def peak_memory(device: jax.Device) -> dict[str, int] | None:
  """Peak and limit of the device allocator, or None where the backend reports no statistics (CPU)."""
  try:
    stats = device.memory_stats()
  except Exception:  # not implemented on every backend
    return None
  if not stats:
    return None
  return {key: int(stats[key]) for key in ("peak_bytes_in_use", "bytes_limit") if key in stats}


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
  parallel = steps.JitSteps(config, sync_batch_norm=True, devices=[device])
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


def is_out_of_memory(error: Exception) -> bool:
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
