"""Tests of the large-batch study (benchmarks/large_batch_study.py and its study_* modules).

The quick run checks the study's bookkeeping (table shape, seeds, LR choice on validation, logged trust
ratios); it does not assert that LARS beats SGD, which a quick mode could be rigged to show either way.
The engine is checked step for step against a NumPy re-implementation, and a synthetic problem shows
the paper's mechanism: momentum SGD diverges at a learning rate where LARS converges.
"""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_optax
from benchmarks import large_batch_study, study_engine, study_report
from input_pipeline.arrays import epoch_permutation

ETA, BETA = 0.001, 5e-4


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  output_dir = tmp_path_factory.mktemp("study")
  paths = large_batch_study.main(["--quick", "--no_progress", "--output_dir", str(output_dir)])
  return paths["digits"], json.loads(paths["digits"]["json"].read_text())


@pytest.mark.timeout(400)
def test_quick_study_writes_every_output(quick_run):
  paths, _ = quick_run
  for path in paths.values():
    assert path.is_file() and path.stat().st_size > 0, path
  assert paths["accuracy_vs_batch"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(400)
def test_quick_study_grid_and_seeds(quick_run):
  _, record = quick_run
  settings = record["settings"]
  cells = record["cells"]
  sweep = [c for c in cells if c["kind"] == "sweep"]
  longer = [c for c in cells if c["kind"] == "longer"]
  assert len(sweep) == len(settings["models"]) * len(settings["optimizers"]) * 2
  assert [(c["optimizer"], c["num_epochs"]) for c in longer] == [("lars", 2 * settings["num_epochs"])]
  for cell in cells:
    grid = settings["grids"][cell["optimizer"]]
    assert np.shape(cell["val_accuracy"]) == np.shape(cell["test_accuracy"]) == (3, len(grid))
    assert cell["seeds"] == [0, 1, 2]
    assert np.shape(cell["train_loss"]) == (3, len(grid), cell["num_epochs"])
    scale = cell["batch_size"] / 32 if cell["optimizer"] == "sgd" else 1.0  # linear vs no scaling.
    np.testing.assert_allclose(cell["peak_learning_rates"], np.asarray(grid) * scale, rtol=1e-6)


@pytest.mark.timeout(400)
def test_quick_study_chooses_on_validation_inside_the_grid(quick_run):
  _, record = quick_run
  for cell in record["cells"]:
    mean_val = np.mean(cell["val_accuracy"], axis=0)
    choice = int(np.argmax(mean_val))
    assert cell["chosen_learning_rate"] == cell["peak_learning_rates"][choice]
    assert 0 < choice < len(mean_val) - 1, (cell["optimizer"], cell["batch_size"], mean_val)
    assert not cell["at_edge"]


@pytest.mark.timeout(400)
def test_quick_study_logs_lars_trust_ratios(quick_run):
  _, record = quick_run
  for cell in record["cells"]:
    diagnostics = cell["diagnostics_at_choice"]
    if cell["optimizer"] == "sgd":
      assert diagnostics == {}
      continue
    lam = diagnostics["trust_ratio"]
    assert set(lam) == {
      "conv1/kernel",
      "conv2/kernel",
      "conv3/kernel",
      "fc4/kernel",
      "fc5/kernel",
      "fc6/kernel",
    }
    for layer, values in lam.items():
      values = np.asarray(values)
      assert values.shape == (3, cell["num_epochs"])
      assert np.all(np.abs(values - 1.0) > 0.5), layer  # adapted layers: λ = O(η ‖w‖/‖g‖), not 1.
      w = np.asarray(diagnostics["param_norm"][layer])
      g = np.asarray(diagnostics["grad_norm"][layer])
      np.testing.assert_allclose(values, ETA * w / (g + BETA * w), rtol=1e-5)


@pytest.mark.timeout(400)
def test_quick_study_markdown_table_shape(quick_run):
  paths, _ = quick_run
  text = paths["markdown"].read_text()
  section = text.split("### Test accuracy")[1].split("###")[0]
  rows = [line for line in section.splitlines() if line.startswith("|")]
  header, _, *body = rows
  assert header.count("|") - 1 == 2 + 2  # batch, steps/epoch, one column per (model, optimizer).
  assert [row.split("|")[1].strip() for row in body] == ["32", "256"]
  entry = re.compile(r"\d+\.\d ± \d+\.\d \[\d+\.\d\] \(γ₀ [\d.e-]+\)")
  for row in body:
    assert len(entry.findall(row)) == 2, row
  assert "Train longer" in text and "trust ratios" in text


def _cell(val, test, lrs=(0.1, 0.2, 0.4)):
  val, test = np.asarray(val, float), np.asarray(test, float)
  runs = study_engine.GridRuns(val, test, np.zeros((*val.shape, 1)), {}, 0.0)
  return study_report.Cell("m", "sgd", 8, 1, "sweep", 1, [0, 1], list(lrs), runs)


def test_cell_chooses_by_mean_validation_not_test():
  # Mean validation accuracies 0.55, 0.85, 0.60; the test split would prefer the first LR.
  cell = _cell(val=[[0.5, 0.9, 0.7], [0.6, 0.8, 0.5]], test=[[0.99, 0.1, 0.2], [0.98, 0.2, 0.3]])
  assert cell.choice == 1 and not cell.at_edge
  assert cell.chosen_learning_rate == 0.2
  np.testing.assert_array_equal(cell.test_accuracy, [0.1, 0.2])


def test_cell_edge_flag():
  assert not _cell(val=[[0.1, 0.9, 0.2]], test=[[0, 0, 0]]).at_edge
  assert _cell(val=[[0.9, 0.1, 0.2]], test=[[0, 0, 0]]).at_edge
  assert not _cell(val=[[0.9]], test=[[0.5]], lrs=(0.1,)).at_edge


def test_settings_merge_grids_and_reject_unknown_optimizers():
  settings = large_batch_study.settings_for("mnist1d", grids={"lars": (1.0, 2.0)}, num_epochs=None)
  assert settings.grid("lars") == (1.0, 2.0)
  assert settings.grid("sgd") == (0.002, 0.008, 0.032, 0.128, 0.512)
  assert settings.num_epochs == large_batch_study.DATASET_SETTINGS["mnist1d"].num_epochs
  with pytest.raises(ValueError, match="optimizers"):
    large_batch_study.settings_for("digits", optimizers=("adam",))


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
