"""Time of one full training step of ResNet-50 (forward, backward, update): LARS against momentum SGD.

The step is train.py's own (`training.steps`, the same code path and options), on fake ImageNet-shaped
data, with the optimizers built by `training.optimizers` from the same config: ``lars`` (the paper's
Algorithm 1 from `lars_optax`) and ``sgd`` (momentum SGD with the same weight decay and mask). Both steps
are compiled first; then, in each round, each is run once in a random order (interleaved, so that a
change of machine load hits both alike), each timing waiting for the result. The table gives the median
and interquartile range per step, the images per second, and the ratio LARS / SGD of the medians and
the median of the per-round ratios. Goal: at most 1.03 (LARS's norms are two extra reads of w and g).

Run from the repository root, on CPU (small per-device batch):

  python -m benchmarks.train_step_speed --batch_size 8 --repetitions 10

On one GPU, bf16 activations and 256 images per device:

  python -m benchmarks.train_step_speed --batch_size 256 --half_precision --repetitions 30
"""

import argparse
import platform
import random
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

import input_pipeline  # noqa: E402
import models  # noqa: E402
from configs import default  # noqa: E402
from training import optimizers, steps  # noqa: E402

OPTIMIZERS = ("lars", "sgd")


def build_step(name: str, args: argparse.Namespace, devices: list) -> tuple[steps.Jit, steps.TrainState]:
  """train.py's jit step for optimizer ``name`` and its replicated initial state."""
  config = default.get_config()
  config.optimizer = name
  config.learning_rate = 1.0
  model = models.get_model(
    args.model, num_classes=1000, dtype=jnp.bfloat16 if args.half_precision else jnp.float32
  )
  schedule = optimizers.create_learning_rate_schedule(config, total_steps=1000, warmup_steps=100)
  tx = optimizers.create_optimizer(config, schedule)
  step_config = steps.StepConfig(model=model, tx=tx, learning_rate_fn=schedule, num_classes=1000)
  parallel = steps.Jit(step_config, sync_batch_norm=True, devices=devices)
  state = steps.create_train_state(model, tx, seed=0, input_shape=(args.image_size, args.image_size, 3))
  return parallel, parallel.place_state(jax.device_get(state))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet50")
  parser.add_argument("--batch_size", type=int, default=8, help="per device")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--num_devices", type=int, default=1)
  parser.add_argument("--half_precision", action="store_true")
  parser.add_argument("--repetitions", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  devices = jax.local_devices()[: args.num_devices]
  global_batch = args.batch_size * len(devices)
  batches = input_pipeline.train_iterator(
    "fake",
    global_batch_size=global_batch,
    seed=0,
    image_size=args.image_size,
    dtype="bfloat16" if args.half_precision else "float32",
    local_device_count=len(devices),
  )
  runs = {name: build_step(name, args, devices) for name in OPTIMIZERS}
  batch = {name: parallel.place_batch(next(batches)) for name, (parallel, _) in runs.items()}
  states = {name: state for name, (_, state) in runs.items()}

  def run_once(name: str) -> float:
    parallel = runs[name][0]
    start = time.perf_counter()
    states[name], metrics = parallel.train_step(states[name], batch[name])
    jax.block_until_ready((states[name], metrics))
    return time.perf_counter() - start

  for name in OPTIMIZERS:  # Compile, then warm up.
    for _ in range(args.warmup + 1):
      run_once(name)
  order = list(OPTIMIZERS)
  rng = random.Random(args.seed)
  times = {name: [] for name in OPTIMIZERS}
  for round_index in range(args.repetitions):
    rng.shuffle(order)
    for name in order:
      times[name].append(run_once(name))
    print(
      f"round {round_index + 1}/{args.repetitions}: "
      + ", ".join(f"{name} {times[name][-1]:.3f} s" for name in OPTIMIZERS),
      file=sys.stderr,
      flush=True,
    )

  print(
    f"{args.model}, {global_batch} images of {args.image_size}x{args.image_size} "
    f"({args.batch_size} per device x {len(devices)} {devices[0].platform}), "
    f"{'bf16' if args.half_precision else 'fp32'} activations; {platform.processor() or platform.machine()}, "
    f"jax {jax.__version__}; {args.repetitions} interleaved rounds"
  )
  print(f"{'optimizer':<10} {'median s/step':>14} {'IQR':>17} {'images/s':>10}")
  for name in OPTIMIZERS:
    q1, median, q3 = np.percentile(times[name], [25, 50, 75])
    print(f"{name:<10} {median:>14.4f} {q1:>8.4f}-{q3:<8.4f} {global_batch / median:>10.1f}")
  ratios = np.asarray(times["lars"]) / np.asarray(times["sgd"])
  print(
    f"lars / sgd: ratio of medians {np.median(times['lars']) / np.median(times['sgd']):.3f}, "
    f"median of per-round ratios {np.median(ratios):.3f} (goal <= 1.03)"
  )


if __name__ == "__main__":
  main()
