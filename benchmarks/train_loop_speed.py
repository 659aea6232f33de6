"""train.py's training loop against a bare jitted step of the same model, batch, optimizer and data.

For each case (a few config overrides of configs/default.py), every round runs, in a fresh random order:

- ``loop``: `training.loop.train_and_evaluate` (train.py's code path, with the case's cadence of
  logging, evaluation, diagnostics and checkpoints) for S + N steps in a fresh workdir. Its steady-state
  speed is what the run itself records: the ``train/steps_per_sec`` windows of metrics.jsonl after step
  S, which lies past the first evaluation (compilation, the first pass over each split, start-up and the
  final save are behind or beyond it). The windows tile steps S to S + N, evaluations and
  checkpoints on the way included, each ending when its last step has completed on the device.
- ``bare``: N steps of a minimal `jax.jit` step (forward and backward pass, batch-norm statistics, the
  same Optax optimizer from `training.optimizers`, donated buffers) on batches of the same data set,
  already on the device; it does no evaluation, no logging and no checkpoint.

It prints, per case, the medians over rounds of the time per step and of the per-round ratio of loop
steps/s to bare steps/s (goal: at least 0.9). With gradient accumulation (k micro-batches) the loop's
cost per micro-batch is compared with a bare step of the micro-batch size (goal: at most 1.1 times its
cost, a ratio of at least 0.91). The ``tfds`` case writes a 10-class data set of fixed-size 28x28 grey
images with TFDS into a temporary directory (nothing is downloaded) and serves it at 16x16.

Run from the repository root (cases: default, pmap, accum4, eval_every_epoch, no_eval, tfds):

  python -m benchmarks.train_loop_speed --rounds 5
  python -m benchmarks.train_loop_speed --cases default tfds --rounds 3
"""

import argparse
import contextlib
import functools
import io
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))

import input_pipeline  # noqa: E402
import models  # noqa: E402
from configs import default  # noqa: E402
from training import loop, metrics_log, optimizers  # noqa: E402

TFDS_NAME = "speed_grey28"
CASES = {
  "default": {},
  "pmap": {"parallelism": "pmap"},
  "accum4": {"grad_accum_steps": 4},
  "eval_every_epoch": {"eval_every_steps": -1},
  "no_eval": {"steps_per_eval": 0, "diagnostics_every_steps": 0},  # No evaluation, no trust ratios.
  "tfds": {"dataset": TFDS_NAME, "image_size": 16},
}


def write_grey28(data_dir: str, num_train: int = 2048, num_test: int = 512) -> None:
  """Writes a 10-class data set of 28x28x1 uint8 images (a class-dependent mean plus noise) with TFDS."""
  import tensorflow_datasets as tfds  # Only this case needs TensorFlow.

  class SpeedGrey28(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      features = {
        "image": tfds.features.Image(shape=(28, 28, 1)),
        "label": tfds.features.ClassLabel(num_classes=10),
      }
      return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(features), supervised_keys=("image", "label")
      )

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(num_train, 0), "test": self._generate_examples(num_test, 1)}

    def _generate_examples(self, count, seed):
      rng = np.random.default_rng(seed)
      for index in range(count):
        label = int(rng.integers(10))
        pixels = np.clip(rng.normal(20 * label + 30, 40, (28, 28, 1)), 0, 255).astype(np.uint8)
        yield index, {"image": pixels, "label": label}

  tfds.disable_progress_bar()
  SpeedGrey28(data_dir=data_dir).download_and_prepare()


def loop_seconds(config, start: int, num_steps: int) -> float:
  """Seconds `train_and_evaluate` (quiet, in a fresh workdir) took from step ``start`` to ``start +
  num_steps``, from the ``train/steps_per_sec`` windows it records."""
  config = config.copy_and_resolve_references()
  config.num_train_steps = start + num_steps
  with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
    loop.train_and_evaluate(config, workdir)
    records = metrics_log.read_metrics(os.path.join(workdir, metrics_log.METRICS_FILE))
  windows = [(r["step"], r["train/steps_per_sec"]) for r in records if "train/steps_per_sec" in r]
  ends = [step for step, _ in windows]
  if start not in ends or start + num_steps not in ends:
    raise ValueError(f"start={start} and start + steps must be logged steps (log_every_steps).")
  tiles = zip(ends[:-1], windows[1:], strict=True)
  return sum((end - begin) / speed for begin, (end, speed) in tiles if end > start)


def bare_step(config, batch_size: int, num_steps: int):
  """A function running ``num_steps`` minimal jitted steps of ``config``'s model and optimizer; compiled."""
  info = input_pipeline.get_dataset_info(
    config.dataset, data_dir=config.data_dir, image_size=config.image_size
  )
  model = models.get_model(config.model, num_classes=info.num_classes)
  schedule = optimizers.create_learning_rate_schedule(config, total_steps=1000, warmup_steps=100)
  tx = optimizers.create_optimizer(config, schedule)
  variables = model.init(jax.random.key(0), jnp.zeros((1, *info.image_shape)), train=False)
  state = (variables["params"], variables.get("batch_stats", {}), tx.init(variables["params"]))
  host = input_pipeline.train_iterator(
    config.dataset,
    global_batch_size=batch_size,
    seed=0,
    data_dir=config.data_dir,
    image_size=config.image_size,
  )
  batches = [
    jax.device_put({k: v.reshape(-1, *v.shape[2:]) for k, v in next(host).items()}) for _ in range(8)
  ]

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, batch):
    params, batch_stats, opt_state = state

    def loss_fn(params):
      logits, updates = model.apply(
        {"params": params, "batch_stats": batch_stats},
        batch["image"],
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": jax.random.key(0)},
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
      return loss, updates.get("batch_stats", {})

    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  def run(count: int = num_steps) -> np.ndarray:
    nonlocal state
    begin = time.perf_counter()
    for index in range(count):
      state = step(state, batches[index % len(batches)])
    jax.block_until_ready(state)
    return time.perf_counter() - begin

  run(2)  # Compile.
  return run


def measure(name: str, config, args) -> dict[str, float]:
  """Median seconds per micro-batch of the loop and of the bare step, and of their ratio, over rounds."""
  k = config.grad_accum_steps
  timers = {
    "loop": lambda: loop_seconds(config, args.start, args.steps),
    "bare": bare_step(config, config.batch_size // k, args.steps),
  }
  timers["loop"]()  # Warm-up: first-call costs (imports, caches) stay out of the rounds.
  rng, times = random.Random(args.seed), {key: [] for key in timers}
  for round_index in range(args.rounds):
    order = list(timers)
    rng.shuffle(order)
    for key in order:
      times[key].append(timers[key]() / args.steps / (k if key == "loop" else 1))
    ms = ", ".join(f"{key} {1e3 * times[key][-1]:.2f}" for key in timers)
    print(f"{name} round {round_index + 1}: ms per micro-batch {ms}", file=sys.stderr, flush=True)
  loop_step, bare = np.asarray(times["loop"]), np.asarray(times["bare"])
  medians = {"loop": np.median(loop_step), "bare": np.median(bare), "ratio": np.median(bare / loop_step)}
  return {
    **medians,
    "range": (min(bare / loop_step), max(bare / loop_step)),
    "k": k,
    "batch": config.batch_size,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=330, help="N: steps timed per round (30 epochs of digits)")
  parser.add_argument("--start", type=int, default=40, help="S: the loop's timed steps start after step S")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  results = {}
  with tempfile.TemporaryDirectory() as data_dir:
    # Compiled programs are cached on disk: shorter rounds; nothing compiles within the timed steps.
    jax.config.update("jax_compilation_cache_dir", os.path.join(data_dir, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    for name in args.cases:
      config = default.get_config()
      config.update(CASES[name])
      if name == "tfds":
        write_grey28(data_dir)
        config.data_dir = data_dir
      results[name] = (config.parallelism, measure(name, config, args))

  print(
    f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
    f"(load {os.getloadavg()[0]:.1f} at the end), "
    f"{jax.device_count()} {jax.devices()[0].platform} device(s), jax {jax.__version__}; "
    f"{args.rounds} interleaved rounds of {args.steps} steps after step {args.start}; medians"
  )
  print("ms per step (per micro-batch with k > 1); ratio: loop steps/s over bare steps/s (median, range)")
  print(f"{'case':<17} {'parallelism':<12} {'loop ms':>8} {'bare ms':>8} {'ratio':>6} {'rounds':>12}")
  for name, (parallelism, result) in results.items():
    k = result["k"]
    unit = f"  (k={k}: per micro-batch of {result['batch'] // k})" if k > 1 else ""
    loop_ms, bare_ms = 1e3 * result["loop"], 1e3 * result["bare"]
    ratio, spread = result["ratio"], "{:.3f}-{:.3f}".format(*result["range"])
    print(f"{name:<17} {parallelism:<12} {loop_ms:>8.2f} {bare_ms:>8.2f} {ratio:>6.3f} {spread:>12}{unit}")


if __name__ == "__main__":
  main()
