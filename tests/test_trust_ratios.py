"""Tests of benchmarks/trust_ratios.py on a small model (AlexNet and ResNet-50 take minutes to compile)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import trust_ratios
from models import get_model

ETA, BETA = 0.001, trust_ratios.WEIGHT_DECAY


@pytest.fixture(scope="module")
def rows():
  return trust_ratios.measure("small_alexnet", image_size=16, batch_size=4, steps=2, learning_rate=2.0)


def _leaves(model_name, image_size):
  """{"conv1/kernel": shape, ...} of the model, flattened independently of lars_optax."""
  model = get_model(model_name, num_classes=10)
  params = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), train=False)
  )["params"]
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(k.key for k in path): leaf.shape for path, leaf in flat}


@pytest.mark.timeout(300)
def test_one_row_per_parameter_leaf(rows):
  expected = _leaves("small_alexnet", 16)
  assert {row.name: row.shape for row in rows} == expected
  for row in rows:
    assert row.adapted == (len(row.shape) > 1), row.name


@pytest.mark.timeout(300)
def test_trust_ratio_is_the_paper_formula_of_the_reported_norms(rows):
  for row in rows:
    assert row.param_norm > 0 and row.grad_norm > 0, row.name  # after one iteration, biases too.
    expected = ETA * row.param_norm / (row.grad_norm + BETA * row.param_norm) if row.adapted else 1.0
    np.testing.assert_allclose(row.trust_ratio, expected, rtol=1e-5, err_msg=row.name)
    np.testing.assert_allclose(row.ratio, row.param_norm / row.grad_norm, rtol=1e-6)


@pytest.mark.timeout(300)
def test_ratios_spread_over_an_order_of_magnitude_and_change_with_training(rows):
  ratios = np.asarray([row.ratio for row in rows])
  assert ratios.max() / ratios.min() > 10
  after = np.asarray([row.ratio_after for row in rows])
  assert np.all(np.isfinite(after)) and not np.allclose(after, ratios, rtol=1e-3)


@pytest.mark.timeout(300)
def test_main_writes_table_and_plot(tmp_path):
  paths = trust_ratios.main(
    ["--quick", "--models", "small_alexnet", "--image_size", "16", "--output_dir", str(tmp_path)]
  )
  text = paths["markdown"].read_text()
  assert "### small_alexnet" in text
  table = [line for line in text.split("### small_alexnet")[1].splitlines() if line.startswith("| ")]
  assert len(table) == 1 + len(_leaves("small_alexnet", 16))  # header + one row per leaf.
  assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_measure_rejects_zero_steps():
  with pytest.raises(ValueError, match="steps"):
    trust_ratios.measure("small_alexnet", image_size=16, batch_size=2, steps=0, learning_rate=1.0)
