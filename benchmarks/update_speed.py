"""Time of one optimizer step (jitted update + ``optax.apply_updates``) on a ResNet-50 parameter tree.

Compares ``lars_optax.lars`` and its variants with momentum SGD with weight decay (Optax) and with
``optax.lars`` configured the same way (same weight decay, same rank mask for weight decay and trust ratio).
Every step is one compiled program with donated parameter and state buffers, as in a training loop. The
optimizers are timed in interleaved rounds (a fresh random order each round) in one process, so that a
change of machine load hits all of them alike. The table gives, per optimizer: the median wall time and its
interquartile range; the ratio to SGD of the medians, the median of the per-round ratios, and the ratio of
median CPU times (which counts only this process's cycles on a shared machine); the number of fusions and
of all work-launching instructions XLA compiled; and the temporary memory of the step.

The parameter tree is the real Flax ResNet-50 of ``models/`` (shapes only, via ``jax.eval_shape``): 161
leaves, 25,557,032 parameters, of which the 54 kernels are adapted and the 107 batch-norm and bias leaves
are excluded.

Run from the repository root:

  python -m benchmarks.update_speed --repetitions 200

Reading the numbers: momentum SGD must read w, g, v and write w, v (20 bytes per float32 parameter); LARS
must also read w and g for the norms (28 bytes, 1.4x: the goal). XLA on CPU writes v and w in two passes,
so there SGD moves 28 bytes and two-pass LARS 36 (1.29x). A full-size temporary adds a write, a read and,
as the runtime maps fresh pages for it every step, page faults: it is the usual cause of a slow variant.
"""

import argparse
import collections
import functools
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lars_optax

REPO_ROOT = Path(__file__).resolve().parents[1]
BASELINE = "sgd"

# Top-level HLO instructions that launch no work of their own.
_FREE_OPS = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "bitcast"})


def model_param_shapes(model_name: str, image_size: int) -> Any:
  """The parameter shapes (``jax.ShapeDtypeStruct``) of a model of ``models/``, without compiling it."""
  if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
  from models import get_model

  model = get_model(model_name, num_classes=1000)
  variables = jax.eval_shape(
    functools.partial(model.init, train=False),
    jax.random.key(0),
    jnp.zeros((1, image_size, image_size, 3), jnp.float32),
  )
  return variables["params"]


def make_optimizers(
  params: Any, *, learning_rate: float, weight_decay: float, momentum: float
) -> dict[str, optax.GradientTransformation]:
  """The optimizers compared, all with the same LR, momentum, weight decay and (rank) mask."""
  mask = lars_optax.rank_mask(params)
  lars = functools.partial(lars_optax.lars, learning_rate, momentum=momentum, weight_decay=weight_decay)
  return {
    BASELINE: optax.chain(
      optax.add_decayed_weights(weight_decay, mask), optax.sgd(learning_rate, momentum=momentum)
    ),
    "lars_optax.lars": lars(),
    "optax.lars": optax.lars(
      learning_rate,
      weight_decay=weight_decay,
      weight_decay_mask=mask,
      trust_ratio_mask=mask,
      momentum=momentum,
    ),
    "lars_optax.lars (update norm)": lars(trust_ratio_norm="update"),
    "lars_optax.lars (LR outside)": lars(learning_rate_placement="outside"),
    "lars_optax.lars (LARC)": lars(trust_clip=True),
    "chain(scale_by_trust_ratio, sgd)": optax.chain(
      lars_optax.scale_by_trust_ratio(weight_decay=weight_decay),
      optax.sgd(learning_rate, momentum=momentum),
    ),
  }


def compile_step(opt: optax.GradientTransformation, params: Any, state: Any, grads: Any) -> Any:
  """update + apply_updates as one compiled program that donates the parameter and state buffers."""

  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()


class ProgramStats(NamedTuple):
  """What XLA made of one step: kernels launched and scratch memory."""

  fusions: int  # fusion instructions in the entry computation
  ops: int  # all instructions there that launch work (fusions, copies, custom calls...)
  temp_bytes: int  # temporary buffers; a full-size one costs a write, a read and fresh pages every step


def program_stats(compiled: Any) -> ProgramStats:
  """Counts the work-launching instructions of a compiled program's entry computation."""
  text = compiled.as_text()
  entry = text[text.index("\nENTRY") :]
  entry = entry[: entry.index("\n}")]
  opcodes = collections.Counter(re.findall(r"=\s+\S+\s+([\w-]+)\(", entry))
  launched = sum(count for opcode, count in opcodes.items() if opcode not in _FREE_OPS)
  return ProgramStats(opcodes["fusion"], launched, int(compiled.memory_analysis().temp_size_in_bytes))


class Timings(NamedTuple):
  """Seconds per step of each optimizer, one entry per round."""

  wall: dict[str, np.ndarray]  # elapsed time (time.perf_counter)
  cpu: dict[str, np.ndarray]  # CPU time of all threads of this process (time.process_time)


def time_interleaved(
  steps: Mapping[str, Callable[..., Any]],
  carries: dict[str, tuple[Any, Any]],
  grads: Any,
  *,
  repetitions: int,
  warmup: int,
  seed: int,
) -> Timings:
  """Times each program over ``repetitions`` rounds that run every program once, in a new random order.

  ``carries`` (parameters and state, donated at each call) are updated in place. CPU time is recorded
  beside wall time: on a machine shared with other work it counts only this process's cycles.
  """
  names = list(steps)
  for name in names:
    for _ in range(warmup):
      carries[name] = steps[name](*carries[name], grads)
    jax.block_until_ready(carries[name])
  rng = np.random.default_rng(seed)
  timings = Timings(
    {name: np.empty(repetitions) for name in names}, {name: np.empty(repetitions) for name in names}
  )
  for round_index in range(repetitions):
    for name in rng.permutation(names):
      wall, cpu = time.perf_counter(), time.process_time()
      carries[name] = steps[name](*carries[name], grads)
      jax.block_until_ready(carries[name])
      timings.cpu[name][round_index] = time.process_time() - cpu
      timings.wall[name][round_index] = time.perf_counter() - wall
  return timings


def markdown_table(timings: Timings, stats: Mapping[str, ProgramStats]) -> str:
  """Median, IQR and ratios to the SGD baseline, one row per optimizer."""
  wall_sgd, cpu_sgd = timings.wall[BASELINE], timings.cpu[BASELINE]
  lines = [
    "| optimizer | median (ms) | IQR (ms) | x SGD | x SGD, per round | x SGD, CPU time | fusions / ops "
    "| temp (MB) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, wall in timings.wall.items():
    q25, median, q75 = np.percentile(wall, [25, 50, 75]) * 1e3
    ratio = np.median(wall) / np.median(wall_sgd)
    paired = np.median(wall / wall_sgd)
    cpu_ratio = np.median(timings.cpu[name]) / np.median(cpu_sgd)
    fusions, ops, temp_bytes = stats[name]
    lines.append(
      f"| {name} | {median:.1f} | {q75 - q25:.1f} | {ratio:.2f} | {paired:.2f} | {cpu_ratio:.2f} "
      f"| {fusions} / {ops} | {temp_bytes / 1e6:.1f} |"
    )
  return "\n".join(lines)


def goal_lines(timings: Timings) -> list[str]:
  """Whether, on median wall times, lars_optax is within 1.4x of SGD and 3x faster than optax.lars."""
  if not {"lars_optax.lars", "optax.lars"} <= set(timings.wall):
    return []
  median = {name: float(np.median(times)) for name, times in timings.wall.items()}
  vs_sgd = median["lars_optax.lars"] / median[BASELINE]
  speedup = median["optax.lars"] / median["lars_optax.lars"]
  return [
    f"lars_optax.lars / SGD = {vs_sgd:.2f} (goal <= 1.4: {'met' if vs_sgd <= 1.4 else 'NOT met'})",
    f"optax.lars / lars_optax.lars = {speedup:.2f} (goal >= 3: {'met' if speedup >= 3 else 'NOT met'})",
  ]


def environment_lines(argv: list[str]) -> list[str]:
  """The command, library versions and the machine, for the record."""
  cpu = platform.processor() or "unknown"
  cpuinfo = Path("/proc/cpuinfo")
  if cpuinfo.exists():
    models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), flags=re.MULTILINE)
    cpu = models[0] if models else cpu
  device = jax.devices()[0]
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return [
    f"command: {shlex.join([Path(sys.executable).name, '-m', 'benchmarks.update_speed', *argv])}",
    f"jax {jax.__version__}, optax {optax.__version__}, lars_optax {lars_optax.__version__}, "
    f"python {platform.python_version()}",
    f"device: {device.platform} ({device.device_kind}), {jax.device_count()} device(s); "
    f"CPU: {cpu}, {cores} cores available; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
  ]


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repetitions", type=int, default=100, help="timed rounds (each runs every optimizer)")
  parser.add_argument("--warmup", type=int, default=5, help="untimed steps per optimizer before timing")
  parser.add_argument("--model", default="resnet50", help="a model name of models/ (default: resnet50)")
  parser.add_argument("--image-size", type=int, default=224, help="input size used to infer the shapes")
  parser.add_argument(
    "--only", nargs="+", default=None, help="optimizer names to time (the SGD baseline is always kept)"
  )
  parser.add_argument("--learning-rate", type=float, default=0.1)
  parser.add_argument("--weight-decay", type=float, default=1e-4)
  parser.add_argument("--momentum", type=float, default=0.9)
  parser.add_argument("--seed", type=int, default=0, help="seeds the gradients and the round order")
  parser.add_argument("--output", type=Path, default=None, help="also write the report to this file")
  args = parser.parse_args(argv)
  if args.repetitions < 1 or args.warmup < 0:
    parser.error("--repetitions must be >= 1 and --warmup >= 0")
  return args


def main(argv: list[str] | None = None) -> str:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  shapes = model_param_shapes(args.model, args.image_size)
  leaves = jax.tree.leaves(shapes)
  optimizers = make_optimizers(
    shapes, learning_rate=args.learning_rate, weight_decay=args.weight_decay, momentum=args.momentum
  )
  if args.only is not None:
    unknown = sorted(set(args.only) - set(optimizers))
    if unknown:
      raise SystemExit(f"--only: unknown optimizer(s) {unknown}; known: {sorted(optimizers)}")
    optimizers = {name: opt for name, opt in optimizers.items() if name == BASELINE or name in args.only}

  keys = iter(jax.random.split(jax.random.key(args.seed), 2 * len(leaves)))
  params = jax.tree.map(lambda leaf: 0.05 * jax.random.normal(next(keys), leaf.shape, leaf.dtype), shapes)
  grads = jax.tree.map(lambda leaf: 1e-3 * jax.random.normal(next(keys), leaf.shape, leaf.dtype), shapes)

  steps, carries, stats = {}, {}, {}
  for name, opt in optimizers.items():
    own_params = jax.tree.map(jnp.copy, params)  # each program donates its own buffers
    state = opt.init(own_params)
    steps[name] = compile_step(opt, own_params, state, grads)
    carries[name] = (own_params, state)
    stats[name] = program_stats(steps[name])

  timings = time_interleaved(
    steps, carries, grads, repetitions=args.repetitions, warmup=args.warmup, seed=args.seed
  )
  num_params = sum(int(np.prod(leaf.shape)) for leaf in leaves)
  report = "\n".join(
    [
      *environment_lines(argv),
      f"parameters: {args.model}, {len(leaves)} leaves, {num_params:,} float32 parameters; "
      f"{args.repetitions} interleaved rounds after {args.warmup} warm-up steps each",
      "",
      markdown_table(timings, stats),
      "",
      *goal_lines(timings),
    ]
  )
  print(report)
  if args.output is not None:
    args.output.write_text(report + "\n")
  return report


if __name__ == "__main__":
  main()
