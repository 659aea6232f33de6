"""Models: local response normalisation, dtypes, dropout under pmap, one LARS step, field ranges."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_models import SMALL_INPUT, _abstract_variables, _init, _no_dropout, _variables

import lars_optax
import models
from models import get_model

# --- local response normalisation ---------------------------------------------------------------


def _lrn_loop(a: np.ndarray, n: int, alpha: float, beta: float, k: float) -> np.ndarray:
  """Caffe's across-channel LRN, one output element at a time, in float64."""
  a = a.astype(np.float64)
  out = np.empty_like(a)
  channels = a.shape[-1]
  for index in np.ndindex(*a.shape):
    c = index[-1]
    window = range(max(0, c - n // 2), min(channels, c + n // 2 + 1))
    sum_sq = sum(a[(*index[:-1], j)] ** 2 for j in window)
    out[index] = a[index] / (k + alpha / n * sum_sq) ** beta
  return out


@pytest.mark.parametrize(
  ("n", "alpha", "beta", "k", "scale"),
  [
    (5, 1e-4, 0.75, 1.0, 40.0),  # AlexNet's values; large inputs so that the window matters
    (3, 0.5, 0.75, 2.0, 1.0),
    (1, 1.0, 0.5, 1.0, 1.0),
    (7, 2e-2, 1.0, 0.5, 3.0),  # a window wider than half the channels: clipped at both ends
  ],
)
def test_lrn_matches_the_caffe_formula(n, alpha, beta, k, scale):
  x = scale * np.random.default_rng(n).normal(size=(2, 3, 4, 9)).astype(np.float32)
  y = models.LocalResponseNorm(n, alpha, beta, k).apply({}, jnp.asarray(x))
  np.testing.assert_allclose(y, _lrn_loop(x, n, alpha, beta, k), rtol=2e-6, atol=1e-7)
  assert not np.allclose(y, x, rtol=1e-3)  # the normaliser is not ~1


def test_lrn_equals_tensorflow_with_alpha_divided_by_n():
  tf = pytest.importorskip("tensorflow")
  x = 30.0 * np.random.default_rng(0).normal(size=(2, 5, 5, 16)).astype(np.float32)
  ours = models.LocalResponseNorm().apply({}, jnp.asarray(x))
  theirs = tf.nn.local_response_normalization(x, depth_radius=2, bias=1.0, alpha=1e-4 / 5, beta=0.75)
  np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5)


def test_lrn_keeps_bf16_and_rejects_even_windows():
  x = jax.random.normal(jax.random.key(0), (2, 7), jnp.bfloat16) * 30
  y = models.LocalResponseNorm().apply({}, x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(y, np.float32), _lrn_loop(np.asarray(x, np.float32), 5, 1e-4, 0.75, 1.0), rtol=1e-2
  )
  with pytest.raises(ValueError, match="size must be a positive odd"):
    models.LocalResponseNorm(size=4).apply({}, x)


# --- dtypes -------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
  ("name", "shape", "kwargs"),
  [
    ("resnet20", (8, 8, 3), {"zero_init_residual": False}),
    ("small_alexnet", (8, 8, 1), {"dropout_rate": 0.0}),
    ("conv1d_bn", (40, 1), {}),
  ],
)
def test_bf16_compute_is_close_to_float32(name, shape, kwargs):
  f32 = get_model(name, num_classes=10, **kwargs)
  bf16 = get_model(name, num_classes=10, dtype=jnp.bfloat16, **kwargs)
  variables = _init(f32, shape)
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  x = jax.random.normal(jax.random.key(3), (8, *shape))
  has_bn = "batch_stats" in variables

  def forward(model, variables, x):
    # Training mode (batch statistics) keeps activations normalised, as in real training.
    out = model.apply(variables, x, train=True, mutable=["batch_stats"] if has_bn else False)
    return out[0] if has_bn else out

  ref = jax.jit(functools.partial(forward, f32))(variables, x)
  low = jax.jit(functools.partial(forward, bf16))(variables, x)
  assert low.dtype == jnp.float32
  scale = float(np.max(np.abs(ref)))
  assert scale > 0
  np.testing.assert_allclose(low, ref, atol=0.05 * scale)
  assert not np.array_equal(low, ref)  # bf16 really was used


@pytest.mark.parametrize(("name", "shape"), [("resnet50", (64, 64, 3)), ("alexnet_bn", (227, 227, 3))])
def test_bf16_activations_with_float32_parameters(name, shape):
  model = get_model(name, num_classes=10, dtype=jnp.bfloat16, **_no_dropout(name))
  variables = _abstract_variables(model, shape)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits, state = jax.eval_shape(
    lambda v, x: model.apply(
      v, x, train=True, capture_intermediates=True, mutable=["batch_stats", "intermediates"]
    ),
    variables,
    jnp.zeros((2, *shape)),
  )
  assert logits.dtype == jnp.float32
  outputs = jax.tree.leaves(state["intermediates"])
  # Every layer's output but the model's own (float32 logits) is computed in bf16.
  assert sum(leaf.dtype == jnp.bfloat16 for leaf in outputs) == len(outputs) - 1
  assert {leaf.dtype for leaf in jax.tree.leaves(state["batch_stats"])} == {jnp.dtype(jnp.float32)}


# --- dropout under pmap -------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_dropout_under_pmap_needs_a_key_per_device():
  """Fold the device index into the dropout key: ``fold_in(key, axis_index)``. The same key on
  every device would drop the same units everywhere."""
  model = models.SmallAlexNet(num_classes=10)
  variables = _variables("small_alexnet", (8, 8, 1))
  devices = jax.local_device_count()
  x = jnp.broadcast_to(jax.random.normal(jax.random.key(4), (2, 8, 8, 1)), (devices, 2, 8, 8, 1))
  key = jax.random.key(5)

  def forward(variables, x, key, fold):
    if fold:
      key = jax.random.fold_in(key, jax.lax.axis_index("batch"))
    return model.apply(variables, x, train=True, rngs={"dropout": key})

  run = jax.pmap(forward, axis_name="batch", in_axes=(None, 0, None, None), static_broadcasted_argnums=3)
  folded = run(variables, x, key, True)
  shared = run(variables, x, key, False)
  for device in range(1, devices):
    np.testing.assert_array_equal(shared[device], shared[0])
    assert not np.allclose(folded[device], folded[0])
  # Each device's output equals a single-device call with that device's folded key.
  single = jax.jit(lambda v, x, k: model.apply(v, x, train=True, rngs={"dropout": k}))
  for device in (0, 5):
    expected = single(variables, x[0], jax.random.fold_in(key, device))
    np.testing.assert_allclose(folded[device], expected, rtol=1e-5, atol=1e-6)


# --- one LARS step ------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(SMALL_INPUT))
def test_one_lars_step_scales_kernels_by_the_trust_ratio(name):
  lr, weight_decay, eta = 0.1, 5e-4, 0.001
  model = get_model(name, num_classes=10)
  shape = SMALL_INPUT[name]
  variables = _variables(name, shape)
  params = variables["params"]
  x = jax.random.normal(jax.random.key(6), (8, *shape))
  labels = jnp.arange(8) % 10
  has_bn = "batch_stats" in variables

  @jax.jit
  def grad_fn(params):
    def loss(params):
      out = model.apply(
        {**variables, "params": params},
        x,
        train=True,
        mutable=["batch_stats"] if has_bn else False,
        rngs={"dropout": jax.random.key(7)},
      )
      logits = out[0] if has_bn else out
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.grad(loss)(params)

  grads = grad_fn(params)
  opt = lars_optax.lars(lr, weight_decay=weight_decay)
  updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)

  scaled = 0
  flat_w = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, w), g, u in zip(flat_w, jax.tree.leaves(grads), jax.tree.leaves(updates), strict=True):
    w, g, u = (np.asarray(a, np.float64) for a in (w, g, u))
    if path[-1].key == "kernel":
      w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
      # λ = η‖w‖ / (‖g‖ + β‖w‖), and 1 when a norm is zero (zero-initialised residual scales
      # give the last convolution of each ResNet block a zero gradient).
      trust = eta * w_norm / (g_norm + weight_decay * w_norm) if w_norm and g_norm else 1.0
      np.testing.assert_allclose(u, -lr * trust * (g + weight_decay * w), rtol=1e-5, atol=1e-12)
      scaled += trust != 1.0
    else:
      # Biases and batch-norm parameters: plain momentum SGD, first step v = lr·g.
      np.testing.assert_allclose(u, -lr * g, rtol=1e-6, atol=0)
  assert scaled >= 3


@pytest.mark.parametrize(
  ("name", "field", "value", "error"),
  [
    ("small_alexnet", "dropout_rate", 1.0, ValueError),
    ("small_alexnet", "dropout_rate", -0.5, ValueError),
    ("alexnet", "lrn_size", 4, ValueError),
    ("small_alexnet_bn", "bn_momentum", 2.0, ValueError),
    ("small_alexnet_bn", "bn_epsilon", 0.0, ValueError),
    ("resnet20", "num_filters", 0, ValueError),
    ("resnet20", "bn_momentum", True, TypeError),
    ("resnet20", "num_classes", 0, ValueError),
  ],
)
def test_fields_out_of_range_are_refused_when_built_naming_the_field(name, field, value, error):
  with pytest.raises(error, match=field) as raised:
    models.get_model(name, **{"num_classes": 10, field: value})
  assert raised.value.argument == field
  models.get_model(name, num_classes=10)  # the defaults are in range
