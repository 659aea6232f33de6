"""Tests of experiments/trust_ratios on a small model (AlexNet and ResNet-50 take minutes to compile).

The reported norms are checked against `_reference_norms`, which redoes the run with the LARS step written
out in float64 NumPy (gradients from ``jax.grad`` of the model's cross-entropy, nothing from lars_optax).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.trust_ratios import layer_norms as trust_ratios
from models import get_model

ETA, BETA, MOMENTUM = 0.001, trust_ratios.WEIGHT_DECAY, 0.9
SMALL = dict(image_size=16, batch_size=4, steps=2, learning_rate=2.0)


@pytest.fixture(scope="module")
def rows():
  return trust_ratios.measure("small_alexnet", **SMALL)


@functools.cache
def _reference_norms(model_name, *, image_size, batch_size, steps, learning_rate, seed=0):
  """{leaf: (‖w‖, ‖g‖ after one iteration, ‖w‖, ‖g‖ after ``steps``)} with LARS in NumPy (float64).

  The same data, initialisation, batches (``default_rng(seed).choice`` per step) and dropout keys
  (``fold_in(key(seed), k + 1)`` at step k) as `trust_ratios.measure`; ‖g‖ is the gradient at the
  weights whose norm is given. LARS, per leaf of rank > 1: λ = η‖w‖/(‖g‖ + β‖w‖), v ← m·v + γ·λ·(g + β·w);
  other leaves: v ← m·v + γ·g; then w ← w − v.
  """
  images, labels = trust_ratios.load_batches(image_size)
  model = get_model(model_name, num_classes=10)
  key = jax.random.key(seed)
  params = model.init(key, jnp.asarray(images[:1]), train=False)["params"]
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = ["/".join(k.key for k in path) for path, _ in flat]

  @jax.jit
  def grad(params, x, y, rng):
    def loss(params):
      logits = model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return jax.grad(loss)(params)

  w = [np.asarray(leaf, np.float64) for _, leaf in flat]
  v = [np.zeros_like(a) for a in w]
  rng = np.random.default_rng(seed)
  norms = {}
  for k in range(steps + 1):
    batch = rng.choice(len(labels), batch_size, replace=False)
    current = jax.tree_util.tree_unflatten(treedef, [a.astype(np.float32) for a in w])
    g = [
      np.asarray(a, np.float64)
      for a in jax.tree.leaves(grad(current, images[batch], labels[batch], jax.random.fold_in(key, k + 1)))
    ]
    if k in (1, steps):
      norms[k] = [(np.linalg.norm(a), np.linalg.norm(b)) for a, b in zip(w, g, strict=True)]
    for i, (wi, gi) in enumerate(zip(w, g, strict=True)):
      if wi.ndim > 1:
        w_norm, g_norm = np.linalg.norm(wi), np.linalg.norm(gi)
        trust = ETA * w_norm / (g_norm + BETA * w_norm) if w_norm and g_norm else 1.0
        v[i] = MOMENTUM * v[i] + learning_rate * trust * (gi + BETA * wi)
      else:
        v[i] = MOMENTUM * v[i] + learning_rate * gi
      w[i] = wi - v[i]
  return {name: (*norms[1][i], *norms[steps][i]) for i, name in enumerate(names)}


def _leaves(model_name, image_size):
  """{"conv1/kernel": shape, ...} of the model, flattened independently of lars_optax."""
  model = get_model(model_name, num_classes=10)
  params = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), train=False)
  )["params"]
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(k.key for k in path): leaf.shape for path, leaf in flat}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_row_per_parameter_leaf(rows):
  expected = _leaves("small_alexnet", 16)
  assert {row.name: row.shape for row in rows} == expected
  for row in rows:
    assert row.adapted == (len(row.shape) > 1), row.name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trust_ratio_is_the_paper_formula_of_the_reported_norms(rows):
  for row in rows:
    assert row.param_norm > 0 and row.grad_norm > 0, row.name  # after one iteration, biases too.
    expected = ETA * row.param_norm / (row.grad_norm + BETA * row.param_norm) if row.adapted else 1.0
    np.testing.assert_allclose(row.trust_ratio, expected, rtol=1e-5, err_msg=row.name)
    np.testing.assert_allclose(row.ratio, row.param_norm / row.grad_norm, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_norms_equal_an_independent_numpy_run(rows):
  reference = _reference_norms("small_alexnet", **SMALL)
  assert {row.name for row in rows} == set(reference)
  for row in rows:
    param_norm, grad_norm = reference[row.name][:2]
    reported = (row.param_norm, row.grad_norm, row.param_norm_after, row.grad_norm_after)
    np.testing.assert_allclose(reported, reference[row.name], rtol=2e-4, err_msg=row.name)
    expected = ETA * param_norm / (grad_norm + BETA * param_norm) if row.adapted else 1.0
    np.testing.assert_allclose(row.trust_ratio, expected, rtol=2e-4, err_msg=row.name)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ratios_spread_over_an_order_of_magnitude_and_change_with_training(rows):
  ratios = np.asarray([row.ratio for row in rows])
  assert ratios.max() / ratios.min() > 10
  after = np.asarray([row.ratio_after for row in rows])
  assert np.all(np.isfinite(after)) and not np.allclose(after, ratios, rtol=1e-3)


def _table(text, model_name):
  """{layer: the row's cells} of one model's table in trust_ratios.md."""
  section = text.split(f"### {model_name}")[1].split("###")[0]
  lines = [line for line in section.splitlines() if line.startswith("|")][2:]  # below the header and rule
  cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
  return {row[0]: row[1:] for row in cells}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_main_writes_the_numbers_of_an_independent_run(tmp_path):
  argv = ["--quick", "--models", "small_alexnet", "--output_dir", str(tmp_path)]
  paths = trust_ratios.main(argv)
  args = trust_ratios.parse_args(argv)
  reference = _reference_norms(
    "small_alexnet",
    image_size=args.image_size,
    batch_size=args.batch_size,
    steps=args.steps,
    learning_rate=args.learning_rate,
  )
  table = _table(paths["markdown"].read_text(), "small_alexnet")
  shapes = _leaves("small_alexnet", args.image_size)
  assert set(table) == set(reference) == set(shapes)
  for name, (shape, mask, *numbers) in table.items():
    param_norm, grad_norm, param_norm_after, grad_norm_after = reference[name]
    adapted = len(shapes[name]) > 1
    assert (shape, mask) == ("×".join(map(str, shapes[name])), "adapted" if adapted else "excluded"), name
    trust = ETA * param_norm / (grad_norm + BETA * param_norm) if adapted else 1.0
    expected = [param_norm, grad_norm, param_norm / grad_norm, param_norm_after / grad_norm_after, trust]
    # Three significant digits in the table.
    np.testing.assert_allclose([float(x) for x in numbers], expected, rtol=5e-3, err_msg=name)
  assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_measure_rejects_zero_steps():
  with pytest.raises(ValueError, match="steps"):
    trust_ratios.measure("small_alexnet", image_size=16, batch_size=2, steps=0, learning_rate=1.0)
