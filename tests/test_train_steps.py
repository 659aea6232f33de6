"""The compiled training steps against computations written out here from the model alone.

Models are the tiny MNIST-1D convnets (input (B, 40, 1), no dropout) on random data: one step, with or
without gradient accumulation, equals the k-fold accumulation written out with `model.apply` (batch
statistics threaded through the micro-batches); pmap equals jit and one device; non-finite steps are
skipped. Every comparison is between independently compiled programs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import input_pipeline
import lars_optax
import models
from training import steps

NUM_CLASSES = 10
SHAPE = (40, 1)
LEARNING_RATE = 0.1


def _batch(rng: np.random.Generator, num_devices: int, per_device: int) -> dict[str, np.ndarray]:
  """A process-local batch (devices, per_device, ...) whose shards differ from device to device."""
  return {
    "image": rng.standard_normal((num_devices, per_device, *SHAPE)).astype(np.float32),
    "label": rng.integers(0, NUM_CLASSES, (num_devices, per_device)).astype(np.int32),
  }


def _regroup(batch: dict[str, np.ndarray], num_devices: int) -> dict[str, np.ndarray]:
  """The same global batch, split over ``num_devices`` instead (process-major, in order)."""
  return {k: v.reshape(num_devices, -1, *v.shape[2:]) for k, v in batch.items()}


def _run(parallel, state, batches):
  state = parallel.place_state(state)
  metrics = []
  for batch in batches:
    state, m = parallel.train_step(state, parallel.place_batch(batch))
    metrics.append(m)
  return jax.device_get(state), jax.device_get(metrics)


def _assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), actual, expected)


def _config(model_name: str, tx, **kwargs) -> steps.StepConfig:
  model = models.get_model(model_name, num_classes=NUM_CLASSES)
  return steps.StepConfig(model=model, tx=tx, learning_rate_fn=lambda count: 0.5, num_classes=10, **kwargs)


def _init(config: steps.StepConfig) -> steps.TrainState:
  return jax.device_get(steps.create_train_state(config.model, config.tx, seed=0, input_shape=SHAPE))


LARS = lars_optax.lars(0.5, weight_decay=1e-3)


@functools.cache
def _lars_steps(kind: str, sync_batch_norm: bool, grad_accum_steps: int, num_devices: int):
  """Compiled LARS steps on conv1d_bn, shared between tests (each compile costs seconds)."""
  config = _config("conv1d_bn", LARS, grad_accum_steps=grad_accum_steps, skip_nonfinite=True)
  return steps.PARALLELISM[kind](config, sync_batch_norm=sync_batch_norm, devices=jax.devices()[:num_devices])


@functools.cache
def _lars_state() -> steps.TrainState:
  return _init(_config("conv1d_bn", LARS))


def _written_out_sgd_step(model, state: steps.TrainState, images: np.ndarray, labels: np.ndarray, k: int):
  """w - γ (1/k) Σ_i ∇L(w; micro-batch i), the running statistics updated by micro-batch 0, 1, ..., k-1."""
  params, batch_stats, grads, losses = state.params, state.batch_stats, [], []
  for images_i, labels_i in zip(np.split(images, k), np.split(labels, k), strict=True):

    def loss(params, images_i=images_i, labels_i=labels_i, batch_stats=batch_stats):
      variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
      logits, updates = model.apply(variables, images_i, train=True, mutable=["batch_stats"])
      log_p = jax.nn.log_softmax(logits)
      return -jnp.mean(jnp.take_along_axis(log_p, labels_i[:, None], axis=-1)), updates.get("batch_stats", {})

    (loss_i, batch_stats), grads_i = jax.value_and_grad(loss, has_aux=True)(params)
    grads.append(grads_i)
    losses.append(loss_i)
  mean_grad = jax.tree.map(lambda *g: sum(g) / k, *grads)
  new_params = jax.tree.map(lambda w, g: w - LEARNING_RATE * g, params, mean_grad)
  return new_params, batch_stats, float(np.mean(losses))


@pytest.mark.slow
@pytest.mark.parametrize(
  ("model_name", "grad_accum_steps", "unroll"),
  [("conv1d", 1, True), ("conv1d_bn", 1, True), ("conv1d_bn", 3, True), ("conv1d_bn", 3, False)],
  ids=["k1", "k1-bn", "k3-bn-unrolled", "k3-bn-scan"],
)
def test_step_equals_the_accumulation_written_out(model_name, grad_accum_steps, unroll):
  """k micro-batches, statistics threaded through them, == the loop over `model.apply` written out here."""
  k = grad_accum_steps
  config = _config(model_name, optax.sgd(LEARNING_RATE), grad_accum_steps=k)
  state = _init(config)
  rng = np.random.default_rng(3)
  batch = {"image": rng.standard_normal((24, *SHAPE)).astype(np.float32), "label": rng.integers(0, 10, 24)}
  layout = steps.StepLayout(axis_name=None, num_shards=1, bn_groups=1, unroll=unroll)
  step = jax.jit(functools.partial(steps.train_step, config=config, layout=layout))
  after, metrics = jax.device_get(step(state, batch))
  params, batch_stats, loss = _written_out_sgd_step(config.model, state, batch["image"], batch["label"], k)
  _assert_trees_close(after.params, params)
  _assert_trees_close(after.batch_stats, batch_stats)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  assert int(after.step) == 1
  # Not vacuous: the step moved the parameters (and the statistics).
  assert not np.allclose(after.params["fc5"]["kernel"], state.params["fc5"]["kernel"])
  if state.batch_stats:
    assert not np.allclose(after.batch_stats["bn1"]["mean"], state.batch_stats["bn1"]["mean"])


@pytest.mark.parametrize("grad_accum_steps", [1, 4])
def test_cpu_step_runs_no_loop(grad_accum_steps):
  """On CPU the compiled step holds no while loop (XLA runs convolutions in one an order slower)."""
  config = _config("conv1d_bn", LARS, grad_accum_steps=grad_accum_steps)
  parallel = steps.JitSteps(config, sync_batch_norm=True, devices=jax.devices()[:1])
  batch = parallel.place_batch(_batch(np.random.default_rng(0), 1, 8))
  hlo = parallel.train_step.lower(parallel.place_state(_lars_state()), batch).as_text()
  assert "while" not in hlo and "convolution" in hlo


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pmap_on_device_shards_equals_one_device_on_global_batch():
  """Synced BN + pmean'd gradients: 4 devices with different shards == 1 device with all of them."""
  rng = np.random.default_rng(0)
  batches = [_batch(rng, 4, 8) for _ in range(2)]
  state = _lars_state()
  multi, multi_metrics = _run(_lars_steps("pmap", True, 1, 4), state, batches)
  single, single_metrics = _run(_lars_steps("pmap", True, 1, 1), state, [_regroup(b, 1) for b in batches])
  _assert_trees_close(multi, single)
  _assert_trees_close(multi_metrics, single_metrics)
  # Not vacuous: the update moved the parameters and the statistics.
  assert not np.allclose(multi.params["fc5"]["kernel"], state.params["fc5"]["kernel"])
  assert not np.allclose(multi.batch_stats["bn1"]["mean"], state.batch_stats["bn1"]["mean"])


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
  ("sync_batch_norm", "grad_accum_steps"), [(True, 1), (False, 2)], ids=["synced", "unsynced-k2"]
)
def test_pmap_and_jit_agree(sync_batch_norm, grad_accum_steps):
  """Same micro-batches and BN groups under both compilers; a NaN batch is skipped under jit."""
  rng = np.random.default_rng(1)
  batches = [_batch(rng, 4, 4 * grad_accum_steps) for _ in range(2)]
  state = _lars_state()
  pmapped, pmap_metrics = _run(_lars_steps("pmap", sync_batch_norm, grad_accum_steps, 4), state, batches)
  jit = _lars_steps("jit", sync_batch_norm, grad_accum_steps, 4)
  jitted, jit_metrics = _run(jit, state, batches)
  _assert_trees_close(pmapped, jitted)
  _assert_trees_close(pmap_metrics, jit_metrics)
  assert int(jitted.step) == 2 and int(jitted.skipped_steps) == 0

  # A non-finite gradient leaves parameters, optimizer state and statistics untouched.
  poisoned = _batch(rng, 4, 4 * grad_accum_steps)
  poisoned["image"][0, 0, 0, 0] = np.nan
  after, metrics = jit.train_step(jit.place_state(jitted), jit.place_batch(poisoned))
  after = jax.device_get(after)
  assert not bool(metrics["finite"])
  assert int(after.step) == 3 and int(after.skipped_steps) == 1
  _assert_trees_close(
    (after.params, after.batch_stats, after.opt_state),
    (jitted.params, jitted.batch_stats, jitted.opt_state),
    rtol=0,
    atol=0,
  )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unsynced_batch_norm_differs_from_synced():
  """Per-device statistics are really per device: the running means differ from the synced ones."""
  rng = np.random.default_rng(2)
  batch = _batch(rng, 4, 4)
  batch["image"][1] += 3.0  # Device 1's shard has another mean.
  state = _lars_state()
  synced, _ = _run(_lars_steps("jit", True, 1, 4), state, [batch])
  unsynced, _ = _run(_lars_steps("jit", False, 1, 4), state, [batch])
  # The first BN sees conv1 outputs; its running mean is m·0 + (1 - m)·(batch mean), so the averaged
  # per-device means equal the global mean, but the normalised activations (and parameters) differ.
  np.testing.assert_allclose(
    unsynced.batch_stats["bn1"]["mean"], synced.batch_stats["bn1"]["mean"], rtol=1e-4, atol=1e-6
  )
  assert not np.allclose(unsynced.batch_stats["bn1"]["var"], synced.batch_stats["bn1"]["var"])


def test_cross_entropy_with_label_smoothing_matches_closed_form():
  logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]], np.float32)
  labels = np.array([0, 1])
  alpha = 0.1
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = np.full((2, 3), alpha / 3) + (1 - alpha) * np.eye(3)[labels]
  expected = -(targets * log_p).sum(-1)
  np.testing.assert_allclose(
    steps.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 3, alpha), expected, rtol=1e-6
  )


def test_prefetch_places_batches_ahead_in_order():
  placed = []

  def place(batch):
    placed.append(batch)
    return batch * 10

  batches = input_pipeline.prefetch_batches(iter(range(5)), place, size=2)
  assert next(batches) == 0 and placed == [0, 1]  # Batch 1 is on its way while step 0 runs.
  assert list(batches) == [10, 20, 30, 40] and placed == [0, 1, 2, 3, 4]
