"""Tests of the masks: which leaves LARS adapts, how masks are checked, and the mask table.

Expected masks are written out by hand or recomputed from shapes with NumPy, never taken from the library.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import lars_optax
from lars_optax import _masks

TOTALS_LINE = re.compile(
  r"^(\d+) leaves: (\d+) adapted \(([\d,]+) parameters\), (\d+) excluded \(([\d,]+) parameters\); "
  r"(\d+) decayed \(([\d,]+) parameters\)$"
)


def _shapes(tree):
  """Turns a nested dict of shape tuples into float32 ``jax.ShapeDtypeStruct`` leaves."""
  return jax.tree.map(
    lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32), tree, is_leaf=lambda x: isinstance(x, tuple)
  )


# A linen-style tree: what `model.init` returns for Conv -> BatchNorm -> Dense.
LINEN_SHAPES = {
  "BatchNorm_0": {"bias": (4,), "scale": (4,)},
  "Conv_0": {"bias": (4,), "kernel": (3, 3, 2, 4)},
  "Dense_0": {"bias": (3,), "kernel": (4, 3)},
}


def _parse_table(table):
  """Splits a mask table into its data rows (path, shape, size, adapted, decayed) and its seven totals."""
  lines = table.splitlines()
  assert re.split(r"\s{2,}", lines[0]) == ["path", "shape", "size", "adapted", "decayed"]
  assert set(lines[1].replace(" ", "")) == {"-"}
  rows = [tuple(re.split(r"\s{2,}", line)) for line in lines[2:-1]]
  totals = TOTALS_LINE.match(lines[-1])
  assert totals is not None, lines[-1]
  return rows, tuple(int(count.replace(",", "")) for count in totals.groups())


class TinyNet(nn.Module):
  """Conv -> BatchNorm -> Dense, to get real Flax linen parameter paths."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(3)(x.mean(axis=(1, 2)))


@functools.cache
def _tiny_linen_params():
  variables = jax.eval_shape(
    functools.partial(TinyNet().init, train=False), jax.random.key(0), jnp.zeros((1, 5, 5, 2))
  )
  return variables["params"]


@functools.cache
def _resnet50_params():
  from models import get_model

  model = get_model("resnet50", num_classes=1000)
  variables = jax.eval_shape(
    functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 224, 224, 3))
  )
  return variables["params"]


def _flat(tree):
  """{"Conv_0/kernel": leaf, ...}: JAX's own rendering of key paths, NNX's trailing ".value" dropped."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    flat[name.removesuffix("/value")] = leaf
  return flat


# ---------------------------------------------------------------------------------------------------------
# rank_mask


def test_rank_mask_excludes_rank_one_and_scalars():
  params = _shapes({**LINEN_SHAPES, "temperature": ()})
  assert lars_optax.rank_mask(params) == {
    "BatchNorm_0": {"bias": False, "scale": False},
    "Conv_0": {"bias": False, "kernel": True},
    "Dense_0": {"bias": False, "kernel": True},
    "temperature": False,
  }


def test_every_leaf_mask_adapts_every_leaf():
  params = _shapes({**LINEN_SHAPES, "temperature": ()})
  assert lars_optax.every_leaf_mask(params) == {
    "BatchNorm_0": {"bias": True, "scale": True},
    "Conv_0": {"bias": True, "kernel": True},
    "Dense_0": {"bias": True, "kernel": True},
    "temperature": True,
  }


def test_every_leaf_mask_gives_a_bias_its_own_trust_ratio_and_weight_decay():
  """One LARS step on a bias with the mask, against the paper's formula in NumPy (not the library)."""
  rng = np.random.default_rng(0)
  b, kernel = rng.normal(size=5).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
  g = rng.normal(size=5).astype(np.float32)
  lr, eta, beta = 2.0, 1e-3, 5e-4
  params, grads = (
    {"bias": jnp.asarray(b), "kernel": jnp.asarray(kernel)},
    {"bias": jnp.asarray(g), "kernel": jnp.ones((5, 3))},
  )
  for mask, expected in [
    (
      lars_optax.every_leaf_mask,
      lr * eta * np.linalg.norm(b) / (np.linalg.norm(g) + beta * np.linalg.norm(b)) * (g + beta * b),
    ),
    (None, lr * g),  # the default: plain SGD at the global rate, no weight decay
  ]:
    opt = lars_optax.lars(lr, weight_decay=beta, trust_coefficient=eta, mask=mask)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["bias"]), -expected, rtol=1e-5)


def test_rank_mask_works_on_concrete_arrays_and_returns_python_bools():
  params = {"kernel": np.ones((2, 3)), "bias": jnp.zeros(3)}
  mask = lars_optax.rank_mask(params)
  assert mask == {"kernel": True, "bias": False}
  assert all(type(flag) is bool for flag in jax.tree.leaves(mask))


STACKED_SHAPES = {
  # nn.scan over L = 5 blocks: every leaf has a leading layer axis.
  "blocks": {"kernel": (5, 8, 8), "bias": (5, 8), "scale": (5, 8), "conv": (5, 3, 3, 8, 8)},
  "head": {"kernel": (8, 2), "bias": (2,)},
}
STACKED_EXPECTED = {
  "blocks": {"kernel": True, "bias": False, "scale": False, "conv": True},
  "head": {"kernel": True, "bias": False},
}


@pytest.mark.parametrize(
  "layer_axes",
  [
    pytest.param(
      {"blocks": dict.fromkeys(STACKED_SHAPES["blocks"], 1), "head": {"kernel": 0, "bias": 0}}, id="tree"
    ),
    pytest.param(
      lambda params: {
        "blocks": jax.tree.map(lambda _: 1, params["blocks"]),
        "head": jax.tree.map(lambda _: 0, params["head"]),
      },
      id="callable",
    ),
  ],
)
def test_rank_mask_stacked_layers(layer_axes):
  params = _shapes(STACKED_SHAPES)
  assert lars_optax.rank_mask(params, layer_axes=layer_axes) == STACKED_EXPECTED


def test_rank_mask_stacked_int_layer_axes():
  params = _shapes(STACKED_SHAPES["blocks"])
  assert lars_optax.rank_mask(params, layer_axes=1) == STACKED_EXPECTED["blocks"]
  # Without declaring the layer axis, a stacked bias (L, C) looks like a matrix and would be adapted.
  assert lars_optax.rank_mask(params)["bias"] is True


class ScannedMlp(nn.Module):
  """Three Dense+LayerNorm blocks stacked by `nn.scan`, then a Dense head."""

  @nn.compact
  def __call__(self, x):
    block = nn.scan(ScannedBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
    x, _ = block(name="blocks")(x, None)
    return nn.Dense(2, name="head")(x)


class ScannedBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return nn.LayerNorm()(nn.Dense(6)(x)), None


def test_rank_mask_on_a_real_nn_scan_tree():
  params = jax.eval_shape(ScannedMlp().init, jax.random.key(0), jnp.zeros((1, 6)))["params"]
  shapes = {path: tuple(leaf.shape) for path, leaf in _flat(params).items()}
  assert shapes == {
    "blocks/Dense_0/bias": (3, 6),
    "blocks/Dense_0/kernel": (3, 6, 6),
    "blocks/LayerNorm_0/bias": (3, 6),
    "blocks/LayerNorm_0/scale": (3, 6),
    "head/bias": (2,),
    "head/kernel": (6, 2),
  }
  layer_axes = {"blocks": jax.tree.map(lambda _: 1, params["blocks"]), "head": {"bias": 0, "kernel": 0}}
  adapted = {
    path for path, flag in _flat(lars_optax.rank_mask(params, layer_axes=layer_axes)).items() if flag
  }
  assert adapted == {"blocks/Dense_0/kernel", "head/kernel"}
  # Without layer_axes the stacked biases and LayerNorm scales would be taken for matrices.
  assert {path for path, flag in _flat(lars_optax.rank_mask(params)).items() if flag} == {
    path for path, shape in shapes.items() if len(shape) >= 2
  }


def test_stacked_mask_reaches_lars():
  """In `lars`, a stacked bias (L, C) gets plain momentum SGD and a stacked kernel per-slice trust ratios."""
  rng = np.random.default_rng(0)
  params = {
    "kernel": rng.normal(size=(3, 4, 4)).astype(np.float32),
    "bias": rng.normal(size=(3, 4)).astype(np.float32),
  }
  grads = {
    "kernel": rng.normal(size=(3, 4, 4)).astype(np.float32),
    "bias": rng.normal(size=(3, 4)).astype(np.float32),
  }
  lr, wd, eta = 0.5, 1e-2, 1e-3
  opt = lars_optax.lars(lr, weight_decay=wd, trust_coefficient=eta, layer_axes=1)
  updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
  w, g = params["kernel"].astype(np.float64), grads["kernel"].astype(np.float64)
  w_norm = np.linalg.norm(w.reshape(3, -1), axis=1)[:, None, None]
  g_norm = np.linalg.norm(g.reshape(3, -1), axis=1)[:, None, None]
  ratio = eta * w_norm / (g_norm + wd * w_norm)
  np.testing.assert_allclose(updates["kernel"], -lr * ratio * (g + wd * w), rtol=1e-5)
  np.testing.assert_allclose(updates["bias"], -lr * grads["bias"], rtol=1e-6)


@pytest.mark.parametrize(
  ("layer_axes", "error", "match"),
  [
    (-1, ValueError, "layer_axes"),
    (2, ValueError, "layer_axes"),  # more than the bias's rank
    ({"kernel": 1}, ValueError, "layer_axes"),  # wrong structure
    ({"kernel": 1, "bias": 0.5}, TypeError, "layer_axes"),
  ],
)
def test_bad_layer_axes(layer_axes, error, match):
  params = _shapes({"kernel": (2, 3, 3), "bias": (3,)})
  with pytest.raises(error, match=match):
    lars_optax.rank_mask(params, layer_axes=layer_axes)


# ---------------------------------------------------------------------------------------------------------
# exclude_names on real Flax linen paths


@pytest.mark.parametrize(
  ("names", "expected"),
  [
    (("bias", "scale"), {"Conv_0/kernel", "Dense_0/kernel"}),
    # A name mask replaces the rank default: only BatchNorm is excluded, rank-1 biases are adapted.
    (("BatchNorm",), {"Conv_0/bias", "Conv_0/kernel", "Dense_0/bias", "Dense_0/kernel"}),
    (("BatchNorm", "bias"), {"Conv_0/kernel", "Dense_0/kernel"}),
    (("Dense",), {"BatchNorm_0/bias", "BatchNorm_0/scale", "Conv_0/bias", "Conv_0/kernel"}),
  ],
)
def test_exclude_names_on_linen_paths(names, expected):
  params = _tiny_linen_params()
  mask = lars_optax.exclude_names(*names)(params)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  assert {path for path, flag in _flat(mask).items() if flag} == expected


def test_exclude_names_is_case_sensitive_substring():
  params = _shapes({"MyBias_layer": {"kernel": (2, 2)}, "Conv_0": {"kernel": (2, 2)}})
  assert lars_optax.exclude_names("bias")(params) == {
    "MyBias_layer": {"kernel": True},
    "Conv_0": {"kernel": True},
  }
  assert lars_optax.exclude_names("Bias")(params) == {
    "MyBias_layer": {"kernel": False},
    "Conv_0": {"kernel": True},
  }


@pytest.mark.parametrize("names", [(), ("",), ("bias", 3)])
def test_exclude_names_rejects_bad_names(names):
  with pytest.raises(ValueError, match="substrings"):
    lars_optax.exclude_names(*names)


# ---------------------------------------------------------------------------------------------------------
# Checking masks: structure and leaf types

PARAMS = {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}
BAD_STRUCTURES = [
  pytest.param({"kernel": True}, id="missing-leaf"),
  pytest.param({"kernel": True, "bias": False, "extra": True}, id="extra-leaf"),
  pytest.param({"kernel": True, "other": False}, id="renamed-leaf"),
  pytest.param([True, False], id="list-not-dict"),
  pytest.param(True, id="single-bool"),
  pytest.param({"kernel": {"w": True}, "bias": False}, id="deeper"),
  pytest.param(lambda params: {"kernel": True}, id="callable"),
]


def _users_of_mask():
  """Every public entry point that takes a mask, as a function of the mask."""
  return {
    "lars.init": lambda mask: lars_optax.lars(0.1, mask=mask).init(PARAMS),
    "scale_by_trust_ratio.init": lambda mask: lars_optax.scale_by_trust_ratio(mask=mask).init(PARAMS),
    "mask_table": lambda mask: lars_optax.mask_table(PARAMS, mask),
  }


@pytest.mark.parametrize("user", sorted(_users_of_mask()))
@pytest.mark.parametrize("mask", BAD_STRUCTURES)
def test_mask_with_wrong_structure_raises_value_error(user, mask):
  with pytest.raises(ValueError, match="mask must have the structure of the parameters"):
    _users_of_mask()[user](mask)


def test_mask_structure_error_shows_both_structures():
  with pytest.raises(ValueError, match="mask") as info:
    lars_optax.mask_table(PARAMS, {"kernel": True})
  assert "params:" in str(info.value) and "'bias'" in str(info.value)


@pytest.mark.parametrize(
  "flag",
  [
    pytest.param(1, id="int"),
    pytest.param(1.0, id="float"),
    pytest.param("yes", id="str"),
    pytest.param(jnp.array(True), id="jax-array"),
  ],
)
@pytest.mark.parametrize("user", sorted(_users_of_mask()))
def test_mask_with_non_bool_leaf_raises_type_error(user, flag):
  with pytest.raises(TypeError, match="mask at 'kernel' must be a Python bool"):
    _users_of_mask()[user]({"kernel": flag, "bias": False})


def test_value_dependent_mask_raises_type_error():
  """A mask computed from parameter values is an array, not a bool: refused before any step runs."""
  opt = lars_optax.lars(0.1, mask=lambda params: jax.tree.map(lambda p: jnp.any(p != 0), params))
  with pytest.raises(TypeError, match="mask at 'bias' must be a Python bool"):
    opt.init(PARAMS)


def test_numpy_bools_are_accepted_like_python_bools():
  mask = {"kernel": np.bool_(True), "bias": np.bool_(False)}
  assert _masks.resolve_mask(mask, PARAMS) == {"kernel": True, "bias": False}
  assert lars_optax.mask_table(PARAMS, mask) == lars_optax.mask_table(PARAMS)


# ---------------------------------------------------------------------------------------------------------
# The real Flax ResNet-50 (models/): the numbers the README quotes.


@pytest.mark.timeout(120)
def test_resnet50_mask_table():
  params = _resnet50_params()
  shapes = {path: tuple(leaf.shape) for path, leaf in _flat(params).items()}
  assert len(shapes) == 161
  assert sum(int(np.prod(shape)) for shape in shapes.values()) == 25_557_032

  rows, counts = _parse_table(lars_optax.mask_table(params))
  assert counts == (161, 54, 25_502_912, 107, 54_120, 54, 25_502_912)
  assert [row[0] for row in rows] == list(shapes)
  adapted_rows = {row[0] for row in rows if row[3] == "yes"}

  # Recomputed from the shapes alone: the 53 conv kernels (rank 4) and the dense kernel (rank 2).
  conv_kernels = {path for path, shape in shapes.items() if len(shape) == 4}
  dense_kernels = {path for path, shape in shapes.items() if len(shape) == 2}
  assert len(conv_kernels) == 53 and len(dense_kernels) == 1
  assert adapted_rows == conv_kernels | dense_kernels
  assert all(path.endswith("/kernel") for path in adapted_rows)
  assert sum(int(np.prod(shapes[path])) for path in adapted_rows) == 25_502_912
  # Everything else (BN scale/offset, the dense bias) is rank 1.
  assert {len(shape) for path, shape in shapes.items() if path not in adapted_rows} == {1}

  # Naming the excluded kinds gives the same mask as the rank default on this tree.
  assert lars_optax.exclude_names("bias", "scale")(params) == lars_optax.rank_mask(params)


# ---------------------------------------------------------------------------------------------------------
# Flax NNX state


class NnxNet(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
    self.linear = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    return self.linear(nnx.relu(self.bn(self.conv(x))).mean(axis=(1, 2)))


def test_masks_on_nnx_state():
  state = nnx.state(NnxNet(nnx.Rngs(0)), nnx.Param)
  # NNX leaves sit behind a `.value` attribute, which the rendered paths drop.
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  assert all(path[-1] == jax.tree_util.GetAttrKey("value") for path in paths)
  expected = {
    "bn/bias": False,
    "bn/scale": False,
    "conv/bias": False,
    "conv/kernel": True,
    "linear/bias": False,
    "linear/kernel": True,
  }
  assert _flat(lars_optax.rank_mask(state)) == expected
  assert _flat(lars_optax.exclude_names("bias", "scale")(state)) == expected
  assert _flat(lars_optax.exclude_names("bn")(state)) == {**expected, "conv/bias": True, "linear/bias": True}

  rows, counts = _parse_table(lars_optax.mask_table(state))
  assert rows == [
    ("bn/bias", "(4,)", "4", "no", "no"),
    ("bn/scale", "(4,)", "4", "no", "no"),
    ("conv/bias", "(4,)", "4", "no", "no"),
    ("conv/kernel", "(3, 3, 2, 4)", "72", "yes", "yes"),
    ("linear/bias", "(3,)", "3", "no", "no"),
    ("linear/kernel", "(4, 3)", "12", "yes", "yes"),
  ]
  assert counts == (6, 2, 84, 4, 15, 2, 84)


@pytest.mark.parametrize("mask", [None, lars_optax.exclude_names("bias", "scale")], ids=["rank", "names"])
def test_lars_step_on_nnx_state(mask):
  """One jitted LARS step on `nnx.state(model, nnx.Param)`, checked leaf by leaf against NumPy."""
  model = NnxNet(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 2))

  def loss(params):
    return jnp.sum(nnx.merge(graphdef, params, rest)(x) ** 2)

  grads = jax.grad(loss)(params)
  lr, wd, eta = 0.3, 1e-3, 1e-3
  opt = lars_optax.lars(lr, weight_decay=wd, trust_coefficient=eta, mask=mask)
  updates, _ = jax.jit(opt.update)(grads, opt.init(params), params)
  assert isinstance(updates, nnx.State)
  new_params = optax.apply_updates(params, updates)

  adapted = {"conv/kernel", "linear/kernel"}
  flat_w, flat_g, flat_new = _flat(params), _flat(grads), _flat(new_params)
  for path, w in flat_w.items():
    w, g = np.asarray(w, np.float64), np.asarray(flat_g[path], np.float64)
    if path in adapted:
      w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
      expected = w - lr * eta * w_norm / (g_norm + wd * w_norm) * (g + wd * w)
    else:
      expected = w - lr * g
    np.testing.assert_allclose(flat_new[path], expected, rtol=1e-5, atol=1e-7, err_msg=path)
