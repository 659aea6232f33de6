"""Tests of the large-batch study's engine (experiments/large_batch_study/engine.py).

The engine is checked step for step against a NumPy re-implementation, a vmapped grid against the same
runs alone, and a synthetic problem shows the paper's mechanism: momentum SGD diverges at a learning rate
where LARS converges.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_optax
from experiments.large_batch_study import engine as study_engine
from input_pipeline.arrays import epoch_permutation
from models import ConvLayer, get_model

BETA = 5e-4


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_vmapped_grid_equals_each_run_alone(optimizer):
  # To float32 rounding (relative differences of about 1e-5 after 18 steps), not bitwise: vmap turns a
  # convolution with per-run kernels into one grouped convolution, whose sums XLA orders differently.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((72, 40, 1)).astype(np.float32)
  y = rng.integers(0, 10, 72).astype(np.int32)
  split = study_engine.Split(x[:48], y[:48], x[48:60], y[48:60], x[60:], y[60:], 10)
  model = get_model(
    "conv1d_bn",
    num_classes=10,
    layers=(ConvLayer(4, (5,), pool=True), ConvLayer(8, (3,))),
    hidden_features=(16,),
  )
  compiled = study_engine.CompiledModel(model, x[:1], batch_size=12)
  make = study_engine.OptimizerHparams().factory(optimizer)
  seeds, peaks = [0, 5], ([0.02, 0.2] if optimizer == "sgd" else [0.5, 2.0])
  together = study_engine.GridTrainer(compiled, make, split, 8, runs_per_call=4).run(
    seeds, peaks, num_epochs=3, warmup_epochs=1
  )
  alone = study_engine.GridTrainer(compiled, make, split, 8, runs_per_call=1)
  for i, seed in enumerate(seeds):
    for j, peak in enumerate(peaks):
      single = alone.run([seed], [peak], num_epochs=3, warmup_epochs=1)
      np.testing.assert_allclose(together.train_loss[i, j], single.train_loss[0, 0], rtol=1e-4)
      np.testing.assert_allclose(together.val_accuracy[i, j], single.val_accuracy[0, 0], atol=1 / 12 + 1e-9)
      for field, layers in together.diagnostics.items():
        for layer, values in layers.items():
          np.testing.assert_allclose(
            values[i, j], single.diagnostics[field][layer][0, 0], rtol=1e-4, err_msg=f"{field}/{layer}"
          )
  assert not np.allclose(together.train_loss[:, 0], together.train_loss[:, 1])  # the runs do differ.


def test_mnist1d_split_keeps_every_training_signal_and_generates_validation():
  split = study_engine.mnist1d_split(val_examples=400, val_seed=1)
  assert (
    len(split.train_labels) == 40_000 and len(split.test_labels) == 10_000 and len(split.val_labels) == 400
  )
  train = {row.tobytes() for row in split.train_images[:2000]}
  assert not any(row.tobytes() in train for row in split.val_images)
  with pytest.raises(ValueError, match="val_seed"):
    study_engine.mnist1d_split(val_examples=400, val_seed=42)


class _Softmax(nn.Module):
  """Linear softmax regression, small enough to re-implement in NumPy."""

  @nn.compact
  def __call__(self, x, train):
    del train
    return nn.Dense(3, kernel_init=nn.initializers.normal(0.5), bias_init=nn.initializers.normal(0.5))(x)


def _numpy_epoch_losses(split, params, peak, *, batch_size, num_epochs, seed, momentum=0.9):
  """Momentum SGD with weight decay on the kernel (Optax's chain), re-derived in NumPy."""
  kernel, bias = (np.asarray(params[k], np.float64) for k in ("kernel", "bias"))
  v_kernel, v_bias = np.zeros_like(kernel), np.zeros_like(bias)
  x, y = split.train_images.astype(np.float64), split.train_labels
  steps = len(y) // batch_size
  total = num_epochs * steps
  warmup = steps  # one epoch
  losses = []
  for epoch in range(num_epochs):
    order = epoch_permutation(seed, epoch, len(y))
    epoch_loss = 0.0
    for k in range(steps):
      t = epoch * steps + k + 1  # warmup_from_first_step: update t uses the schedule at t.
      rate = peak * (t / warmup if t < warmup else (1 - (t - warmup) / (total - warmup)) ** 2)
      idx = order[k * batch_size : (k + 1) * batch_size]
      logits = x[idx] @ kernel + bias
      p = np.exp(logits - logits.max(1, keepdims=True))
      p /= p.sum(1, keepdims=True)
      epoch_loss += -np.mean(np.log(p[np.arange(len(idx)), y[idx]]))
      d = (p - np.eye(3)[y[idx]]) / len(idx)
      g_kernel, g_bias = x[idx].T @ d + BETA * kernel, d.sum(0)
      v_kernel, v_bias = momentum * v_kernel + g_kernel, momentum * v_bias + g_bias
      kernel, bias = kernel - rate * v_kernel, bias - rate * v_bias
    losses.append(epoch_loss / steps)
  return np.asarray(losses)


@pytest.mark.parametrize("runs_per_call", [1, 2])
def test_grid_trainer_matches_numpy_momentum_sgd(runs_per_call):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((40, 5)).astype(np.float32)
  y = rng.integers(0, 3, 40).astype(np.int32)
  split = study_engine.Split(x[:32], y[:32], x[32:], y[32:], x[32:], y[32:], 3)
  model = _Softmax()
  compiled = study_engine.CompiledModel(model, x[:1], batch_size=5)
  make_optimizer = study_engine.OptimizerHparams(weight_decay=BETA).factory("sgd")
  trainer = study_engine.GridTrainer(compiled, make_optimizer, split, 8, runs_per_call)
  seeds, peaks = [3, 7], [0.05, 0.5]
  runs = trainer.run(seeds, peaks, num_epochs=3, warmup_epochs=1)
  for i, seed in enumerate(seeds):
    key = jax.random.fold_in(jax.random.key(seed), 0)
    params = model.init(key, jnp.asarray(x[:1]), train=False)["params"]["Dense_0"]
    for j, peak in enumerate(peaks):
      expected = _numpy_epoch_losses(split, params, peak, batch_size=8, num_epochs=3, seed=seed)
      np.testing.assert_allclose(runs.train_loss[i, j], expected, rtol=2e-4)
  assert runs.val_accuracy.shape == (2, 2) and runs.diagnostics == {}
  assert set(np.unique(runs.val_accuracy * 8)) <= set(range(9))  # counts out of 8 examples.


def _two_layer_problem():
  """y = x W1 W2 with ‖W1‖ / ‖W2‖ ≈ 1e3: the gradient of the small layer is huge and vice versa."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((64, 8)).astype(np.float32)
  y = (x @ rng.standard_normal((8, 1))).astype(np.float32)
  params = {
    "w1": jnp.asarray(rng.standard_normal((8, 8)) / np.sqrt(8), jnp.float32),
    "w2": jnp.asarray(1e-3 * rng.standard_normal((8, 1)), jnp.float32),
  }
  return params, lambda p: jnp.mean((x @ p["w1"] @ p["w2"] - y) ** 2)


def _train(tx, params, loss, steps=200):
  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return float(loss(params))


def test_layer_scales_differ_by_three_orders_of_magnitude():
  params, loss = _two_layer_problem()
  w = {k: float(jnp.linalg.norm(v)) for k, v in params.items()}
  g = {k: float(jnp.linalg.norm(v)) for k, v in jax.grad(loss)(params).items()}
  assert 500 < w["w1"] / w["w2"] < 2000
  assert w["w1"] / g["w1"] > 1e4 * (w["w2"] / g["w2"])  # ‖w‖/‖g‖ of the two layers: 1e2 vs 3e-4.


@pytest.mark.parametrize("learning_rate", [0.3, 1.0])
def test_momentum_sgd_diverges_where_lars_converges(learning_rate):
  params, loss = _two_layer_problem()
  initial = float(loss(params))
  sgd = _train(optax.sgd(learning_rate, momentum=0.9), params, loss)
  lars = _train(lars_optax.lars(learning_rate, momentum=0.9, trust_coefficient=0.02), params, loss)
  assert not np.isfinite(sgd) or sgd > 1e3 * initial
  assert lars < 1e-3 * initial


def test_momentum_sgd_converges_at_a_small_learning_rate():
  params, loss = _two_layer_problem()
  assert _train(optax.sgd(0.01, momentum=0.9), params, loss) < 1e-6 * float(loss(params))
