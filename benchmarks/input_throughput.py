r"""Images per second of the ImageNet training pipeline: fused decode-and-crop against decode-then-crop.

Generates ImageNet-like JPEGs (the sizes of common ImageNet photos, 4:2:0 chroma, quality 90,
smooth content with texture: about the bytes per pixel of ImageNet's files) into a temporary
directory, then runs `input_pipeline`'s training pipeline over them (shuffle, Inception crop, flip,
bicubic resize to 224, normalisation, batching) with the two augmentations "inception" (the crop
window is read from the JPEG header and only that window is decoded, `tf.image.decode_and_crop_jpeg`)
and "inception_unfused" (the whole image is decoded, then cropped). The encoded files are cached in
memory, so disk speed does not enter. The two pipelines are timed in interleaved rounds (fused,
unfused, fused, ...), each on a fresh iterator after a warm-up, so that a change of machine load hits
both alike; the report gives the median images/s of each, the ratio of the medians, and the median of
the per-round ratios.

Run from the repository root:

  python -m benchmarks.input_throughput --num_images 2000 --rounds 5
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from input_pipeline import sharding, tfds_pipeline

# (height, width) of frequent ImageNet photo sizes, drawn uniformly.
IMAGE_SHAPES = ((375, 500), (500, 375), (333, 500), (500, 333), (400, 500), (500, 500), (480, 640))
MODES = ("inception", "inception_unfused")


def write_jpegs(directory: str, num_images: int, seed: int = 0) -> list[str]:
  """Writes `num_images` JPEGs into `directory` and returns their paths."""
  rng = np.random.default_rng(seed)
  paths = []
  for index in range(num_images):
    height, width = IMAGE_SHAPES[rng.integers(len(IMAGE_SHAPES))]
    coarse = rng.uniform(0, 255, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, [height, width], method="bicubic").numpy()
    pixels = np.clip(smooth + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    path = os.path.join(directory, f"{index:06d}.jpg")
    tf.io.write_file(path, tf.io.encode_jpeg(pixels, quality=90, chroma_downsampling=True))
    paths.append(path)
  return paths


def build(paths: list[str], mode: str, batch_size: int, num_threads: int | None) -> tf.data.Dataset:
  records = tf.data.Dataset.from_tensor_slices(paths).map(
    lambda path: {"image": tf.io.read_file(path), "label": tf.constant(0, tf.int32)}
  )
  return tfds_pipeline.train_dataset(
    records.cache(),
    layout=sharding.ProcessLayout(batch_size, 0, 1, 1),
    steps_per_epoch=len(paths) // batch_size,
    seed=0,
    augmentation=mode,
    image_size=224,
    shuffle_buffer_size=1024,
    num_threads=num_threads,
  )


def measure(dataset: tf.data.Dataset, num_batches: int, batch_size: int) -> tuple[float, float]:
  """`(images per second, images per CPU-second)` over `num_batches` batches of a fresh iterator.

  CPU time is this process's (all tf.data threads): on a shared machine it depends much less on the
  other processes than the wall-clock rate, and it is what an input-bound trainer pays per image.
  """
  iterator = iter(dataset)
  for _ in range(2):  # warm-up: threads started, prefetch buffers filled.
    next(iterator)
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(iterator)
  images = num_batches * batch_size
  return images / (time.perf_counter() - start), images / (time.process_time() - start_cpu)


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as file:
      return next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def _interleaved_rounds(datasets, rounds: int, batches: int, batch_size: int):
  """Images per second and per CPU-second of each mode, one measurement of each per round, in turn."""
  rates: dict[str, list[float]] = {mode: [] for mode in MODES}
  cpu_rates: dict[str, list[float]] = {mode: [] for mode in MODES}
  for round_index in range(rounds):
    for mode in MODES:
      rate, cpu_rate = measure(datasets[mode], batches, batch_size)
      rates[mode].append(rate)
      cpu_rates[mode].append(cpu_rate)
    per_mode = (
      f"{mode} {rates[mode][-1]:.0f} images/s ({cpu_rates[mode][-1]:.0f} per CPU-s)" for mode in MODES
    )
    print(f"round {round_index + 1}: " + ", ".join(per_mode), flush=True)
  return rates, cpu_rates


def _summary(per_round: dict[str, list[float]]) -> dict[str, float]:
  """Medians of each mode, the ratio of the medians and the median of the per-round ratios."""
  fused, unfused = (statistics.median(per_round[mode]) for mode in MODES)
  ratios = [a / b for a, b in zip(per_round[MODES[0]], per_round[MODES[1]], strict=True)]
  return {
    "median_fused": fused,
    "median_unfused": unfused,
    "ratio_of_medians": fused / unfused,
    "median_of_ratios": statistics.median(ratios),
  }


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_images", type=int, default=2000)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--batches_per_round", type=int, default=None, help="default: one epoch")
  parser.add_argument("--num_threads", type=int, default=None, help="default: usable CPUs")
  parser.add_argument("--output", default=None, help="also write the results as JSON here")
  args = parser.parse_args(argv)
  if args.num_images < 2 * args.batch_size:
    parser.error("--num_images must be at least twice --batch_size")
  batches = args.batches_per_round or args.num_images // args.batch_size

  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    paths = write_jpegs(directory, args.num_images)
    sizes = [os.path.getsize(path) for path in paths]
    print(
      f"wrote {len(paths)} JPEGs in {time.perf_counter() - start:.0f} s, "
      f"mean {np.mean(sizes) / 1024:.0f} KiB",
      flush=True,
    )
    datasets = {mode: build(paths, mode, args.batch_size, args.num_threads) for mode in MODES}
    for dataset in datasets.values():  # one full epoch fills the in-memory cache of the files.
      for _ in dataset.take(len(paths) // args.batch_size + 1):
        pass
    rates, cpu_rates = _interleaved_rounds(datasets, args.rounds, batches, args.batch_size)

  result = {
    "command": "python -m benchmarks.input_throughput " + shlex.join(argv or sys.argv[1:]),
    "machine": f"{_cpu_model()}, {len(os.sched_getaffinity(0))} usable CPUs",
    "load_average_after": os.getloadavg()[0],
    "tensorflow": tf.__version__,
    "num_images": args.num_images,
    "mean_jpeg_kib": float(np.mean(sizes) / 1024),
    "batch_size": args.batch_size,
    "images_per_round": batches * args.batch_size,
    "rounds": args.rounds,
    "images_per_second": rates,
    "images_per_cpu_second": cpu_rates,
    "wall": _summary(rates),
    "cpu": _summary(cpu_rates),
  }
  for key, unit in (("wall", "images/s"), ("cpu", "images per CPU-second")):
    print(
      f"median {unit}: fused {result[key]['median_fused']:.0f}, decode-then-crop "
      f"{result[key]['median_unfused']:.0f}; ratio of medians {result[key]['ratio_of_medians']:.2f}, "
      f"median per-round ratio {result[key]['median_of_ratios']:.2f}"
    )
  if args.output:
    with open(args.output, "w") as file:
      json.dump(result, file, indent=2)
  return result


if __name__ == "__main__":
  main()
