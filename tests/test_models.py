"""models/: parameter counts, shapes, LRN, batch norm (local and synchronised), bf16, dropout keys,
and one LARS step on each small model, each checked against an independent computation.

Large models are only traced (``jax.eval_shape``); everything that compiles runs on the small
models at 8x8 (ResNet-20 included), except a single ResNet-50 forward pass at 32x32.
"""

import dataclasses
import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lars_optax
import models
from models import MODELS, get_model
from models import registry as models_registry

# The input each model is documented for (batch axis excluded).
DOCUMENTED_INPUT = {
  "alexnet": (227, 227, 3),
  "alexnet_bn": (227, 227, 3),
  "resnet18": (224, 224, 3),
  "resnet34": (224, 224, 3),
  "resnet50": (224, 224, 3),
  "resnet101": (224, 224, 3),
  "resnet152": (224, 224, 3),
  "resnet20": (32, 32, 3),
  "small_alexnet": (8, 8, 1),
  "small_alexnet_bn": (8, 8, 1),
  "conv1d": (40, 1),
  "conv1d_bn": (40, 1),
}
BN_MODELS = ("alexnet_bn", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
BN_MODELS += ("resnet20", "small_alexnet_bn", "conv1d_bn")
# Small models with the (cheap) input used for anything that compiles.
SMALL_INPUT = {
  "resnet20": (8, 8, 3),
  "small_alexnet": (8, 8, 1),
  "small_alexnet_bn": (8, 8, 1),
  "conv1d": (40, 1),
  "conv1d_bn": (40, 1),
}


def _conv(kernel: tuple[int, ...], c_in: int, c_out: int, bias: bool = True, groups: int = 1) -> int:
  """Parameters of a convolution: each output channel sees c_in / groups input channels."""
  return int(np.prod(kernel)) * (c_in // groups) * c_out + (c_out if bias else 0)


def _dense(n_in: int, n_out: int, bias: bool = True) -> int:
  return n_in * n_out + (n_out if bias else 0)


def _bn(c: int) -> int:
  return 2 * c  # scale and offset


def _basic(c_in: int, c_out: int) -> int:
  projection = _conv((1, 1), c_in, c_out, False) + _bn(c_out) if c_in != c_out else 0
  convs = _conv((3, 3), c_in, c_out, False) + _conv((3, 3), c_out, c_out, False)
  return convs + 2 * _bn(c_out) + projection


# Closed forms written out layer by layer (independent of the builders).
_ALEXNET = {
  groups: _conv((11, 11), 3, 96)
  + _conv((5, 5), 96, 256, groups=groups)
  + _conv((3, 3), 256, 384)
  + _conv((3, 3), 384, 384, groups=groups)
  + _conv((3, 3), 384, 256, groups=groups)
  + _dense(6 * 6 * 256, 4096)
  + _dense(4096, 4096)
  + _dense(4096, 1000)
  for groups in (1, 2)
}
_SMALL_ALEXNET = (
  _conv((3, 3), 1, 32)
  + _conv((3, 3), 32, 64)
  + _conv((3, 3), 64, 128)
  + _dense(2 * 2 * 128, 256)
  + _dense(256, 256)
  + _dense(256, 10)
)
_CONV1D = (
  _conv((5,), 1, 32) + _conv((5,), 32, 32) + _conv((3,), 32, 64) + _dense(10 * 64, 128) + _dense(128, 10)
)
# With batch norm, the biases of the layers it follows become BN scales and offsets.
_SMALL_ALEXNET_BN = _SMALL_ALEXNET - (32 + 64 + 128 + 256 + 256) + _bn(32 + 64 + 128 + 256 + 256)
_CONV1D_BN = _CONV1D - (32 + 32 + 64 + 128) + _bn(32 + 32 + 64 + 128)
_ALEXNET_BN = _ALEXNET[2] - (96 + 256 + 384 + 384 + 256 + 4096 + 4096)
_ALEXNET_BN += _bn(96 + 256 + 384 + 384 + 256 + 4096 + 4096)
_RESNET20 = (
  _conv((3, 3), 3, 16, False)
  + _bn(16)
  + 3 * _basic(16, 16)
  + _basic(16, 32)
  + 2 * _basic(32, 32)
  + _basic(32, 64)
  + 2 * _basic(64, 64)
  + _dense(64, 10)
)


# (name, extra kwargs, input shape, expected trainable parameters). ImageNet numbers are the
# torchvision / Caffe reference counts; the small ones are the closed forms above.
PARAMETER_COUNTS = [
  ("resnet18", {}, (224, 224, 3), 11_689_512),
  ("resnet34", {}, (224, 224, 3), 21_797_672),
  ("resnet50", {}, (224, 224, 3), 25_557_032),
  ("resnet101", {}, (224, 224, 3), 44_549_160),
  ("resnet152", {}, (224, 224, 3), 60_192_808),
  ("alexnet", {}, (227, 227, 3), 60_965_224),
  ("alexnet", {"grouped": False}, (227, 227, 3), 62_378_344),
  ("alexnet_bn", {}, (227, 227, 3), _ALEXNET_BN),
  ("resnet20", {"num_classes": 10}, (32, 32, 3), _RESNET20),
  ("small_alexnet", {"num_classes": 10}, (8, 8, 1), _SMALL_ALEXNET),
  ("small_alexnet_bn", {"num_classes": 10}, (8, 8, 1), _SMALL_ALEXNET_BN),
  ("conv1d", {"num_classes": 10}, (40, 1), _CONV1D),
  ("conv1d_bn", {"num_classes": 10}, (40, 1), _CONV1D_BN),
]


def _abstract_variables(model, shape):
  return jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape), jnp.float32), train=False)
  )


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@functools.cache
def _init(model, shape):
  """Initialised variables, computed once per (module, input shape) for the whole file.

  An "rbg" key: XLA compiles threefry-based initialisers about 3x slower on CPU.
  """
  return jax.jit(functools.partial(model.init, train=False))(
    jax.random.key(0, impl="rbg"), jnp.zeros((1, *shape), jnp.float32)
  )


def _variables(name, shape):
  """Initial variables of ``get_model(name, num_classes=10)``; they also fit its variants that
  change no parameter (dtype, dropout rate, batch-norm momentum, axis name)."""
  return _init(get_model(name, num_classes=10), shape)


# --- registry ---------------------------------------------------------------------------------


def test_registry_holds_the_contract_names():
  assert set(MODELS) == set(DOCUMENTED_INPUT)
  assert isinstance(get_model("resnet50", num_classes=7), models.ResNet)
  assert get_model("small_alexnet_bn", num_classes=3, dropout_rate=0.1).dropout_rate == 0.1
  # The MNIST-1D nets are whole networks of the AlexNet builder, registered under their data's names.
  assert (MODELS["conv1d"], MODELS["conv1d_bn"]) == (models.AlexNet1D, models.AlexNet1DBN)


def test_unknown_model_raises_listing_the_known_names():
  with pytest.raises(ValueError, match="name must be one of") as info:
    get_model("resnet51", num_classes=10)
  for name in MODELS:
    assert repr(name) in str(info.value)


def test_registry_docstring_example():
  result = doctest.testmod(models_registry, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0


# --- shapes and parameter counts ----------------------------------------------------------------


def test_reference_alexnet_counts_are_the_closed_forms():
  assert _ALEXNET == {2: 60_965_224, 1: 62_378_344}
  assert _ALEXNET_BN == 60_974_792


@pytest.mark.parametrize(("name", "kwargs", "shape", "expected"), PARAMETER_COUNTS)
def test_parameter_count(name, kwargs, shape, expected):
  model = get_model(name, **{"num_classes": 1000, **kwargs})
  variables = _abstract_variables(model, shape)
  assert _count(variables["params"]) == expected
  for leaf in jax.tree.leaves(variables["params"]):
    assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(MODELS))
def test_documented_input_gives_logits(name):
  model = get_model(name, num_classes=17)
  shape = DOCUMENTED_INPUT[name]
  variables = _abstract_variables(model, shape)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, jnp.zeros((3, *shape)))
  assert (logits.shape, logits.dtype) == ((3, 17), jnp.float32)
  assert ("batch_stats" in variables) == (name in BN_MODELS)


@pytest.mark.parametrize(
  ("name", "shape"),
  [
    ("small_alexnet", (8, 8, 1)),
    ("small_alexnet", (16, 16, 3)),
    ("small_alexnet_bn", (32, 32, 3)),
    ("resnet20", (8, 8, 1)),
    ("resnet18", (32, 32, 3)),
    ("resnet50", (64, 64, 3)),
    ("alexnet", (224, 224, 3)),  # runs, but fc6 then has 5x5x256 inputs instead of 6x6x256
    ("conv1d_bn", (64, 2)),
  ],
)
def test_other_input_sizes_give_logits(name, shape):
  model = get_model(name, num_classes=10)
  variables = _abstract_variables(model, shape)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, jnp.zeros((4, *shape)))
  assert (logits.shape, logits.dtype) == ((4, 10), jnp.float32)


def _resnet50_at_init_numpy(params, x, eps=1e-5):
  """ResNet-50's evaluation-mode forward pass at initialisation, in float64 NumPy, from the architecture.

  With zero-initialised residual scales every bottleneck's residual branch is exactly 0, so a block is
  relu(shortcut(x)): the identity (its input is already ≥ 0) or, in the first block of each stage, the
  1x1 projection (stride 2 from the second stage on) and its batch norm. Batch norm in evaluation mode
  with the initial statistics (mean 0, variance 1) is scale · x / sqrt(1 + ε) + bias.
  """
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

  def bn(h, q):
    return q["scale"] * h / np.sqrt(1 + eps) + q["bias"]

  # Stem: 7x7 convolution, stride 2, padding 3 on each side; batch norm; ReLU.
  kernel = p["stem"]["conv_init"]["kernel"]
  padded = np.pad(np.asarray(x, np.float64), ((0, 0), (3, 3), (3, 3), (0, 0)))
  size = (padded.shape[1] - 7) // 2 + 1
  h = sum(
    padded[:, i : i + 2 * size : 2, j : j + 2 * size : 2, :] @ kernel[i, j]
    for i in range(7)
    for j in range(7)
  )
  h = np.maximum(bn(h, p["stem"]["bn_init"]), 0)
  # 3x3 max-pooling, stride 2, SAME: ceil(size / 2) outputs, the one padded row and column at the end.
  out = -(-size // 2)
  pad = max((out - 1) * 2 + 3 - size, 0)
  padded = np.pad(
    h, ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)), constant_values=-np.inf
  )
  h = np.max(
    [padded[:, i : i + 2 * out : 2, j : j + 2 * out : 2, :] for i in range(3) for j in range(3)], axis=0
  )
  for index in range(16):  # stages of 3, 4, 6, 3 blocks; blocks 3, 7 and 13 open stages 2-4
    block = p[f"BottleneckResNetBlock_{index}"]
    if "conv_proj" in block:
      stride = 2 if index in (3, 7, 13) else 1
      h = bn(h[:, ::stride, ::stride, :] @ block["conv_proj"]["kernel"][0, 0], block["norm_proj"])
    h = np.maximum(h, 0)
  return h.mean(axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resnet50_small_resolution_forward():
  model = models.ResNet50(num_classes=10)
  x = jax.random.normal(jax.random.key(8), (2, 32, 32, 3))
  init = jax.jit(functools.partial(model.init_with_output, train=False))
  logits, variables = init(jax.random.key(0, impl="rbg"), x)
  assert (logits.shape, logits.dtype) == ((2, 10), jnp.float32)
  # Zero-initialised residual scales: the third batch norm of every bottleneck block starts at 0.
  for index in range(16):
    block = variables["params"][f"BottleneckResNetBlock_{index}"]
    np.testing.assert_array_equal(block["BatchNorm_1"]["scale"], 1.0)
    np.testing.assert_array_equal(block["BatchNorm_2"]["scale"], 0.0)
  expected = _resnet50_at_init_numpy(variables["params"], x)
  assert not np.allclose(expected[0], expected[1], rtol=0.1)  # the two inputs give different logits
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_resnet50_is_v1_5_stride_on_the_3x3_conv():
  model = models.ResNet50(num_classes=10)
  variables = _abstract_variables(model, (64, 64, 3))
  _, state = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"]),
    variables,
    jnp.zeros((1, 64, 64, 3)),
  )
  first_of_stage2 = state["intermediates"]["BottleneckResNetBlock_3"]
  # 64x64 input → 16x16 after the stem; the 1x1 reduce keeps 16x16, the 3x3 halves it.
  assert first_of_stage2["Conv_0"]["__call__"][0].shape == (1, 16, 16, 128)
  assert first_of_stage2["Conv_1"]["__call__"][0].shape == (1, 8, 8, 128)
  assert first_of_stage2["conv_proj"]["__call__"][0].shape == (1, 8, 8, 512)


@pytest.mark.parametrize("zero_init_residual", [True, False])
def test_zero_init_residual_makes_blocks_start_from_their_shortcut(zero_init_residual):
  model = models.ResNet20(num_classes=10, zero_init_residual=zero_init_residual)
  variables = _init(model, (8, 8, 3))
  params = variables["params"]
  for index in range(9):
    block = params[f"ResNetBlock_{index}"]
    np.testing.assert_array_equal(block["BatchNorm_0"]["scale"], 1.0)
    np.testing.assert_array_equal(block["BatchNorm_1"]["scale"], 0.0 if zero_init_residual else 1.0)
  np.testing.assert_array_equal(params["stem"]["bn_init"]["scale"], 1.0)
  # A zero last scale silences the residual branch: its kernels then do not affect the logits.
  scrambled = jax.tree_util.tree_map_with_path(
    lambda path, leaf: -3.0 * leaf if path[1].key in ("Conv_0", "Conv_1") else leaf, params
  )
  forward = jax.jit(lambda params, x: model.apply({**variables, "params": params}, x, train=False))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  unchanged = np.allclose(forward(scrambled, x), forward(params, x), rtol=1e-5, atol=1e-6)
  assert unchanged == zero_init_residual


def test_alexnet_layers_are_caffe_layers():
  shapes = jax.tree.map(lambda a: a.shape, _abstract_variables(models.AlexNet(1000), (227, 227, 3)))
  kernels = {name: layer["kernel"] for name, layer in shapes["params"].items()}
  assert kernels == {
    "conv1": (11, 11, 3, 96),
    "conv2": (5, 5, 48, 256),  # grouped: each output sees half of the 96 inputs
    "conv3": (3, 3, 256, 384),
    "conv4": (3, 3, 192, 384),
    "conv5": (3, 3, 192, 256),
    "fc6": (6 * 6 * 256, 4096),
    "fc7": (4096, 4096),
    "fc8": (4096, 1000),
  }
  bn_params = _abstract_variables(models.AlexNetBN(1000), (227, 227, 3))["params"]
  # Layers followed by batch norm carry no bias; the classifier does.
  assert [n for n, layer in bn_params.items() if "bias" in layer] == [f"bn{i}" for i in range(1, 8)] + ["fc8"]


def test_grouped_convolution_splits_channels():
  """With grouped=True, conv2's first 128 outputs see only conv1's first 48 channels: changing the
  biases of conv1 channels 48..95 leaves them unchanged and changes the other 128."""
  layers = (models.ConvLayer(96, (11, 11), strides=4, padding="VALID"), models.alexnet.ALEXNET_LAYERS[1])
  model = models.AlexNet(
    10, layers=(*layers[:1], dataclasses.replace(layers[1], lrn=False, pool=False)), hidden_features=()
  )
  params = _init(model, (23, 23, 3))["params"]
  conv2 = jax.jit(
    lambda params, x: model.apply(
      {"params": params},
      x,
      train=False,
      capture_intermediates=lambda m, _: m.name == "conv2",
      mutable=["intermediates"],
    )[1]["intermediates"]["conv2"]["__call__"][0]
  )
  x = jax.random.normal(jax.random.key(0), (1, 23, 23, 3))
  bias = params["conv1"]["bias"]
  perturbed = {**params, "conv1": {**params["conv1"], "bias": bias.at[48:].add(1.0)}}
  out, out_perturbed = conv2(params, x), conv2(perturbed, x)
  np.testing.assert_array_equal(out[..., :128], out_perturbed[..., :128])
  assert not np.allclose(out[..., 128:], out_perturbed[..., 128:])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parameter_names_make_name_masks_equal_rank_masks(name):
  """Kernels have rank >= 2, biases and BN scales rank 1: masks by name and by rank agree."""
  params = _abstract_variables(get_model(name, num_classes=10), DOCUMENTED_INPUT[name])["params"]
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  assert {path[-1].key for path, _ in paths} <= {"kernel", "bias", "scale"}
  for path, leaf in paths:
    assert (path[-1].key == "kernel") == (leaf.ndim >= 2), path
  by_name = lars_optax.exclude_names("bias", "scale")(params)
  by_rank = jax.tree.map(lambda leaf: leaf.ndim > 1, params)
  assert by_name == by_rank


# --- batch norm ---------------------------------------------------------------------------------

# The first convolution's name and the path of the batch norm that follows it.
_FIRST_LAYERS = {
  "small_alexnet_bn": ("conv1", ("bn1",)),
  "conv1d_bn": ("conv1", ("bn1",)),
  "resnet20": ("conv_init", ("stem", "bn_init")),
}


def _first_bn_stats(batch_stats, name):
  return functools.reduce(lambda tree, key: tree[key], _FIRST_LAYERS[name][1], batch_stats)


@pytest.mark.parametrize("name", sorted(_FIRST_LAYERS))
def test_batch_stats_update_only_in_training(name):
  momentum = 0.8
  model = get_model(name, num_classes=10, bn_momentum=momentum, **_no_dropout(name))
  shape = SMALL_INPUT[name]
  variables = _variables(name, shape)
  x = jax.random.normal(jax.random.key(1), (6, *shape)) + 0.5

  @functools.partial(jax.jit, static_argnames="train")
  def apply(variables, x, train):
    return model.apply(
      variables,
      x,
      train=train,
      mutable=["batch_stats", "intermediates"],
      capture_intermediates=lambda m, _: m.name == _FIRST_LAYERS[name][0],
    )

  _, evaluated = apply(variables, x, False)
  jax.tree.map(np.testing.assert_array_equal, evaluated["batch_stats"], variables["batch_stats"])
  _, trained = apply(variables, x, True)
  conv_out = np.asarray(jax.tree.leaves(trained["intermediates"])[0], np.float64)
  axes = tuple(range(conv_out.ndim - 1))
  batch_mean = conv_out.mean(axis=axes)
  batch_var = ((conv_out - batch_mean) ** 2).mean(axis=axes)
  stats = _first_bn_stats(trained["batch_stats"], name)
  # new = m · old + (1 - m) · batch, from old mean 0 and old variance 1.
  np.testing.assert_allclose(stats["mean"], (1 - momentum) * batch_mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], momentum + (1 - momentum) * batch_var, rtol=1e-4)
  assert all(
    not np.allclose(new, old)
    for new, old in zip(
      jax.tree.leaves(trained["batch_stats"]), jax.tree.leaves(variables["batch_stats"]), strict=True
    )
  )


def _no_dropout(name):
  return {"dropout_rate": 0.0} if "alexnet" in name or "conv1d" in name else {}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["small_alexnet_bn", "resnet20"])
def test_pmap_synchronised_bn_equals_global_batch(name):
  devices = jax.local_device_count()
  assert devices == 8, "conftest sets 8 CPU devices"
  shape = SMALL_INPUT[name]
  per_device = 3
  global_model = get_model(name, num_classes=10, **_no_dropout(name))
  synced = get_model(name, num_classes=10, axis_name="batch", **_no_dropout(name))
  variables = _variables(name, shape)
  # Every device gets its own shard, with a device-dependent offset so that shard statistics differ.
  x = jax.random.normal(jax.random.key(2), (devices * per_device, *shape))
  x = x + jnp.repeat(jnp.arange(devices, dtype=jnp.float32), per_device).reshape(-1, *[1] * len(shape))

  def train_forward(model, variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"])

  logits, state = jax.jit(functools.partial(train_forward, global_model))(variables, x)
  shards = x.reshape(devices, per_device, *shape)
  p_logits, p_state = jax.pmap(
    functools.partial(train_forward, synced), axis_name="batch", in_axes=(None, 0)
  )(variables, shards)
  # The shards' offsets differ, so per-device statistics would give other logits and statistics.
  np.testing.assert_allclose(p_logits.reshape(logits.shape), logits, rtol=2e-4, atol=2e-5)
  for device in range(devices):
    jax.tree.map(
      lambda ours, ref, d=device: np.testing.assert_allclose(ours[d], ref, rtol=1e-4, atol=1e-6),
      p_state["batch_stats"],
      state["batch_stats"],
    )
