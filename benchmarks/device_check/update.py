"""Part 1: the optimizer update on a model's parameter tree, timed two ways, against the memory roofline.

One jitted update + ``optax.apply_updates`` with donated buffers for momentum SGD with weight decay (the
baseline), ``lars_optax.lars`` (the paper, and ``trust_ratio_norm="update"``),
``chain(lars_optax.scale_by_trust_ratio, optax.sgd)`` and ``optax.lars``, built by
`benchmarks.update_speed.make_optimizers` (same LR, momentum, weight decay and rank mask). Each is timed in
interleaved rounds (a fresh random order each round, `benchmarks.update_speed.time_interleaved`) two ways:
*dispatch*, ``--update_inner`` calls of the one-update program back to back, the device queue kept full by
asynchronous dispatch (what a loop of update calls costs, host dispatch included); and *in-program*,
``--update_inner`` updates in one ``lax.fori_loop`` program (device time per update, as inside a training
step, plus a loop iteration). The one-update programs come first; the loop programs are compiled only while
``--update_budget_s`` allows, so that the training parts keep their time.

Per optimizer: the median times, the ratio to SGD, the kernels per update counted from the compiled HLO
(`benchmarks.hlo_stats.count_kernels` gives the rule), and the bytes moved against a measured copy
bandwidth (the roofline). Bytes are given two ways: the arithmetic floor (float32: SGD reads w, g, v and
writes w, v, 20 bytes per parameter; LARS reads w and g once more for the norms, +8 bytes per adapted
parameter) and XLA's cost-model count of the compiled program (operands and results of every kernel, an
upper estimate). The copy bandwidth is that of a jitted ``x + 1`` on a ``--copy_mib`` float32 array,
counting the bytes read and written.
"""

import argparse
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import lars_optax
from benchmarks import hlo_stats, update_speed
from benchmarks.device_check.timing import Deadline, median_quartiles

BASELINE = update_speed.BASELINE  # "sgd"
UPDATE_OPTIMIZERS = (
  BASELINE,
  "lars_optax.lars",
  "lars_optax.lars (update norm)",
  "chain(scale_by_trust_ratio, sgd)",
  "optax.lars",
)
SGD_BYTES_PER_PARAM = 20  # float32: read w, g, v; write w, v
NORM_BYTES_PER_ADAPTED_PARAM = 8  # LARS: read w and g once more for ‖w‖ and ‖g‖


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


def _inputs(args: argparse.Namespace) -> tuple[dict[str, Any], Any, Any, dict[str, Any]]:
  """The result's header, random parameters and gradients of the model's shapes, and the optimizers."""
  shapes = update_speed.model_param_shapes(args.model, args.image_size)
  leaves = jax.tree.leaves(shapes)
  adapted = jax.tree.leaves(lars_optax.rank_mask(shapes))
  all_optimizers = update_speed.make_optimizers(shapes, learning_rate=0.1, weight_decay=1e-4, momentum=0.9)
  keys = iter(jax.random.split(jax.random.key(args.seed), 2 * len(leaves)))
  params = jax.tree.map(lambda leaf: 0.05 * jax.random.normal(next(keys), leaf.shape, leaf.dtype), shapes)
  grads = jax.tree.map(lambda leaf: 1e-3 * jax.random.normal(next(keys), leaf.shape, leaf.dtype), shapes)
  result: dict[str, Any] = {
    "model": args.model,
    "num_leaves": len(leaves),
    "num_params": sum(int(np.prod(leaf.shape)) for leaf in leaves),
    "num_adapted_params": sum(int(np.prod(x.shape)) for x, a in zip(leaves, adapted, strict=True) if a),
    "repetitions": args.update_repetitions,
    "inner": args.update_inner,
    "skipped": [],
    "optimizers": {},
  }
  return result, params, grads, {name: all_optimizers[name] for name in UPDATE_OPTIMIZERS}


def _program_figures(name: str, compiled: Any, compile_s: float, result: dict[str, Any]) -> dict[str, Any]:
  """Kernels, temporaries and bytes moved (arithmetic floor and XLA's count) of one update program."""
  kernels = hlo_stats.count_kernels(compiled.as_text())
  floor = SGD_BYTES_PER_PARAM * result["num_params"]
  if name != BASELINE:
    floor += NORM_BYTES_PER_ADAPTED_PARAM * result["num_adapted_params"]
  return {
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


def _add_rooflines(result: dict[str, Any], bandwidth: float | None) -> None:
  """Bytes / copy bandwidth per optimizer, and its fraction of the in-program (else dispatch) time."""
  for figures in result["optimizers"].values():
    median = figures.get("in_program", figures["dispatch"])["median_s"]
    for kind in ("floor", "xla"):
      moved = figures[f"bytes_{kind}"]
      roofline = moved / bandwidth if bandwidth and moved else None
      figures[f"roofline_{kind}_s"] = roofline
      figures[f"roofline_{kind}_fraction"] = roofline / median if roofline else None


def update_part(args: argparse.Namespace, bandwidth: float | None, deadline: Deadline) -> dict[str, Any]:
  """Part 1: the optimizer update on the model's parameter tree (see the module docstring).

  The one-update programs (kernel counts, *dispatch* times) come first; the ``fori_loop`` programs
  (*in-program* times) are compiled only while ``--update_budget_s`` allows, so that the training parts
  keep their time.
  """
  result, params, grads, optimizers = _inputs(args)
  update_deadline = Deadline(min(args.update_budget_s, args.time_budget_s), start=deadline.start)

  def own_copy(opt: optax.GradientTransformation) -> tuple[Any, Any]:
    # Each program donates its own buffers. ``init`` under jit: eager ``lars_optax`` init shares one zero
    # buffer among its diagnostics, which a program that reads the state cannot take donated twice.
    own = jax.tree.map(jnp.copy, params)
    return own, jax.jit(opt.init)(own)

  estimate = 0.0  # the longest compilation so far, one-update and loop programs alike

  def compile_all(names, compile_one, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``{name: compiled}`` and their carries, while the update budget allows the next compilation."""
    nonlocal estimate
    programs, carries = {}, {}
    for name in names:
      if not update_deadline.allows(2 * estimate + 5):
        left = update_deadline.left()
        result["skipped"].append(f"{name}: {what}not compiled, {left:.0f} s of the update budget left")
        continue
      carries[name] = own_copy(optimizers[name])
      start = time.perf_counter()
      programs[name] = compile_one(name, carries[name])
      estimate = max(estimate, time.perf_counter() - start)
    return programs, carries

  def one_update(name: str, carry: tuple[Any, Any]) -> Any:
    start = time.perf_counter()
    compiled = update_speed.compile_step(optimizers[name], *carry, grads)
    result["optimizers"][name] = _program_figures(name, compiled, time.perf_counter() - start, result)
    return _repeated(compiled, args.update_inner)

  dispatch, carries = compile_all(optimizers, one_update, "")
  if BASELINE not in dispatch:
    return result
  _time_modes(result, "dispatch", dispatch, carries, grads, args)
  del dispatch, carries
  loops, carries = compile_all(
    list(result["optimizers"]),
    lambda name, carry: compile_loop(optimizers[name], *carry, grads, args.update_inner),
    "in-program loop ",
  )
  if BASELINE in loops:
    _time_modes(result, "in_program", loops, carries, grads, args)
  _add_rooflines(result, bandwidth)
  return result
