"""Worker of `test_input_pipeline_multiprocess.py`: one JAX process of a two-process evaluation.

Run as `python input_pipeline_testing_multiprocess.py PORT PROCESS_ID TINY_DATA_DIR`, with two CPU
devices per process. It evaluates two fixed classifiers with `eval_dataset` and `jax.pmap`, sums the
masked counts over all devices of all processes with `psum`, and prints them as JSON.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

NUM_PROCESSES = 2
DIGITS_BATCH = 16  # 359 test digits: 23 batches, the last one 7 / 16 full.
TINY_BATCH = 4  # 13 validation images in parts of 7 and 6: 4 batches on each process.


def digits_centroids() -> np.ndarray:
  """Class means of the digits training split: a nearest-centroid classifier, `(10, 8, 8, 1)`."""
  import input_pipeline

  x_train, y_train, _, _ = input_pipeline.load_arrays("digits")
  return np.stack([x_train[y_train == label].mean(axis=0) for label in range(10)])


def nearest_centroid(images: jax.Array, centroids: jax.Array) -> jax.Array:
  distances = jnp.sum((images[:, None] - centroids[None]) ** 2, axis=(2, 3, 4))
  return jnp.argmin(distances, axis=1)


def brightest_channel(images: jax.Array) -> jax.Array:
  return jnp.argmax(jnp.mean(images, axis=(1, 2)), axis=-1)


def _masked_counts(predict):
  def counts(batch):
    hits = (predict(batch["image"]) == batch["label"]) & batch["mask"]
    totals = jnp.stack([jnp.sum(hits), jnp.sum(batch["mask"])]).astype(jnp.int32)
    return jax.lax.psum(totals, "devices")

  return jax.pmap(counts, axis_name="devices")


def evaluate(name: str, predict, global_batch_size: int, **kwargs) -> dict:
  import input_pipeline

  step = _masked_counts(predict)
  totals, num_batches = np.zeros(2, np.int64), 0
  batches = input_pipeline.eval_dataset(name, global_batch_size=global_batch_size, **kwargs)
  for batch in batches:  # (local devices, per-device batch, ...): what jax.pmap takes.
    totals += np.asarray(step(batch)[0])
    num_batches += 1
  return {"correct": int(totals[0]), "count": int(totals[1]), "batches": num_batches}


def main(port: int, process_id: int, tiny_data_dir: str) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=NUM_PROCESSES,
    process_id=process_id,
    initialization_timeout=120,
  )
  import input_pipeline_testing  # registers the tiny TFDS builder.

  centroids = jnp.asarray(digits_centroids())
  result = {
    "process_index": jax.process_index(),
    "device_count": jax.device_count(),
    "digits": evaluate("digits", lambda x: nearest_centroid(x, centroids), DIGITS_BATCH),
    "tiny": evaluate(
      input_pipeline_testing.NAME,
      brightest_channel,
      TINY_BATCH,
      data_dir=tiny_data_dir,
      image_size=16,
    ),
  }
  print(json.dumps(result), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
