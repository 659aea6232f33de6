"""Tests of the per-layer diagnostics (λ, ‖w‖, ‖g‖): their values, and finding them in any optimizer state.

Expected values come from an independent float64 NumPy computation of

    λ = η ‖w‖ / (‖g‖ + β ‖w‖ + ε)   ("paper"),     λ = η ‖w‖ / (‖g + β w‖ + ε)   ("update"),

with λ = 1 where ‖w‖ = 0 or the denominator's gradient norm is 0, ‖w‖ taken *before* the update, and
λ = 1, ‖g‖ of the raw gradient for leaves excluded by the mask.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lars_optax

LR, WD, ETA, EPS = 0.5, 1e-2, 1e-3, 1e-9
SHAPES = {"conv": {"kernel": (3, 3, 2, 4), "bias": (4,)}, "dense": {"kernel": (8, 3), "bias": (3,)}}
ADAPTED = {"conv/kernel": True, "conv/bias": False, "dense/kernel": True, "dense/bias": False}


def _flat(tree, prefix=""):
  """{"conv/kernel": array, ...} of nested dicts (or NNX states), walked by hand."""
  flat = {}
  for key, value in tree.items():
    if hasattr(value, "items"):
      flat.update(_flat(value, f"{prefix}{key}/"))
    else:
      flat[f"{prefix}{key}"] = np.asarray(value)
  return flat


def _random_tree(seed, shapes=SHAPES, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda shape: jnp.asarray(rng.normal(size=shape), dtype), shapes, is_leaf=lambda x: isinstance(x, tuple)
  )


def _reference(params, grads, *, norm="paper", adapted=ADAPTED, weight_decay=WD, eta=ETA, eps=EPS):
  """{path: (λ, ‖w‖, ‖g‖)} in float64 NumPy, from the formulas in the module docstring."""
  flat_grads = _flat(grads)
  expected = {}
  for path, w in _flat(params).items():
    w, g = np.asarray(w, np.float64), np.asarray(flat_grads[path], np.float64)
    w_norm = np.linalg.norm(w)
    if not adapted[path]:
      expected[path] = (1.0, w_norm, np.linalg.norm(g))
      continue
    if norm == "paper":
      g_norm = np.linalg.norm(g)
      denominator = g_norm + weight_decay * w_norm + eps
    else:
      g_norm = np.linalg.norm(g + weight_decay * w)
      denominator = g_norm + eps
    ratio = 1.0 if w_norm == 0 or g_norm == 0 else eta * w_norm / denominator
    expected[path] = (ratio, w_norm, g_norm)
  return expected


def _assert_diagnostics(diagnostics, expected, rtol=1e-5):
  """Checks every field of every leaf: float32 scalars equal to the reference."""
  flat = lars_optax.flatten_diagnostics(diagnostics)
  assert len(flat) == 3 * len(expected)
  for path, values in expected.items():
    for field, value in zip(("trust_ratio", "param_norm", "grad_norm"), values, strict=True):
      got = flat[f"{field}/{path}"]
      assert got.dtype == jnp.float32 and got.shape == (), (field, path, got)
      np.testing.assert_allclose(got, value, rtol=rtol, atol=1e-12, err_msg=f"{field}/{path}")


def _schedule(count):
  return LR / (1.0 + count)


# Each case: an optimizer containing one LARS state, and the norm its denominator uses.
CASES = {
  "lars": (lambda: lars_optax.lars(_schedule, weight_decay=WD, trust_coefficient=ETA, eps=EPS), "paper"),
  "lars-update-norm": (
    lambda: lars_optax.lars(
      _schedule, weight_decay=WD, trust_coefficient=ETA, eps=EPS, trust_ratio_norm="update"
    ),
    "update",
  ),
  "lars-outside-nesterov": (
    lambda: lars_optax.lars(
      _schedule,
      weight_decay=WD,
      trust_coefficient=ETA,
      eps=EPS,
      learning_rate_placement="outside",
      nesterov=True,
    ),
    "paper",
  ),
  "chain-scale_by_trust_ratio-sgd": (
    lambda: optax.chain(
      lars_optax.scale_by_trust_ratio(weight_decay=WD, trust_coefficient=ETA, eps=EPS),
      optax.sgd(_schedule, momentum=0.9),
    ),
    "paper",
  ),
  "chain-scale_by_trust_ratio-update-norm": (
    lambda: optax.chain(
      lars_optax.scale_by_trust_ratio(
        weight_decay=WD, trust_coefficient=ETA, eps=EPS, trust_ratio_norm="update"
      ),
      optax.sgd(_schedule, momentum=0.9),
    ),
    "update",
  ),
  "chain-identity-lars": (
    lambda: optax.chain(
      optax.identity(), lars_optax.lars(_schedule, weight_decay=WD, trust_coefficient=ETA, eps=EPS)
    ),
    "paper",
  ),
  "multi_steps-k1": (
    lambda: optax.MultiSteps(
      lars_optax.lars(_schedule, weight_decay=WD, trust_coefficient=ETA, eps=EPS), every_k_schedule=1
    ),
    "paper",
  ),
  "inject_hyperparams": (
    lambda: optax.inject_hyperparams(lars_optax.lars)(
      learning_rate=_schedule, weight_decay=WD, trust_coefficient=ETA, eps=EPS, trust_ratio_norm="update"
    ),
    "update",
  ),
  "apply_if_finite": (
    lambda: optax.apply_if_finite(
      lars_optax.lars(_schedule, weight_decay=WD, trust_coefficient=ETA, eps=EPS), max_consecutive_errors=3
    ),
    "paper",
  ),
  "nested-multi_steps-apply_if_finite-inject": (
    lambda: optax.MultiSteps(
      optax.apply_if_finite(
        optax.inject_hyperparams(lars_optax.lars)(
          learning_rate=_schedule, weight_decay=WD, trust_coefficient=ETA, eps=EPS
        ),
        max_consecutive_errors=3,
      ),
      every_k_schedule=1,
    ),
    "paper",
  ),
}


def _step(opt):
  """One training step: update, then apply (jit it, and donate params and state as a training loop does)."""

  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _jitted_step(opt):
  return jax.jit(_step(opt))


@pytest.mark.parametrize("case", sorted(CASES))
def test_diagnostics_match_numpy_over_steps(case):
  """Under jit, over 3 steps with a changing LR: λ, ‖w‖ (before the update) and ‖g‖ of each leaf."""
  make_opt, norm = CASES[case]
  opt = make_opt()
  params = _random_tree(0)
  state = opt.init(params)
  zeros = {path: (0.0, 0.0, 0.0) for path in ADAPTED}
  _assert_diagnostics(lars_optax.get_diagnostics(state), zeros)
  step = _jitted_step(opt)
  for t in range(3):
    grads = _random_tree(10 + t)
    expected = _reference(params, grads, norm=norm)
    new_params, state = step(params, state, grads)
    _assert_diagnostics(lars_optax.get_diagnostics(state), expected)
    assert not np.allclose(new_params["conv"]["kernel"], params["conv"]["kernel"])
    params = new_params


def test_larc_diagnostics_hold_the_unclipped_ratio():
  """With trust_clip, λ is reported before LARC's min(λ, γ_t): here λ > γ_t for the conv kernel."""
  lr, eta = 1e-3, 0.02
  params, grads = _random_tree(0), _random_tree(1)
  opt = lars_optax.lars(lr, weight_decay=WD, trust_coefficient=eta, eps=EPS, trust_clip=True)
  updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
  expected = _reference(params, grads, eta=eta)
  assert expected["conv/kernel"][0] > lr
  _assert_diagnostics(lars_optax.get_diagnostics(state), expected)
  # The step itself is clipped: rate min(λ, γ) = γ on the conv kernel.
  w, g = np.asarray(params["conv"]["kernel"]), np.asarray(grads["conv"]["kernel"])
  np.testing.assert_allclose(updates["conv"]["kernel"], -lr * (g + WD * w), rtol=1e-5)


def test_diagnostics_eager_equal_jitted():
  opt = lars_optax.lars(LR, weight_decay=WD, trust_coefficient=ETA, eps=EPS)
  params, grads = _random_tree(0), _random_tree(1)
  _, eager_state = opt.update(grads, opt.init(params), params)
  _, jit_state = jax.jit(opt.update)(grads, opt.init(params), params)
  _assert_diagnostics(lars_optax.get_diagnostics(eager_state), _reference(params, grads))
  jax.tree.map(
    np.testing.assert_allclose,
    lars_optax.get_diagnostics(eager_state),
    lars_optax.get_diagnostics(jit_state),
  )


def test_multi_steps_updates_diagnostics_only_on_real_steps():
  """k = 3 micro-steps: unchanged after micro-steps, then the values of the step on the mean gradient."""
  k = 3
  opt = optax.MultiSteps(
    lars_optax.lars(_schedule, weight_decay=WD, trust_coefficient=ETA, eps=EPS), every_k_schedule=k
  )
  params = _random_tree(0)
  state = opt.init(params)
  step = _jitted_step(opt)
  previous = lars_optax.get_diagnostics(state)
  for real_step in range(2):
    micro_grads = [_random_tree(100 * real_step + i) for i in range(k)]
    for grads in micro_grads[:-1]:
      new_params, state = step(params, state, grads)
      jax.tree.map(np.testing.assert_array_equal, new_params, params)
      jax.tree.map(np.testing.assert_array_equal, lars_optax.get_diagnostics(state), previous)
    mean_grads = jax.tree.map(lambda *g: sum(g) / k, *micro_grads)
    expected = _reference(params, mean_grads)
    params, state = step(params, state, micro_grads[-1])
    previous = lars_optax.get_diagnostics(state)
    _assert_diagnostics(previous, expected)


def test_apply_if_finite_keeps_diagnostics_of_the_last_finite_step():
  opt = optax.apply_if_finite(
    lars_optax.lars(LR, weight_decay=WD, trust_coefficient=ETA, eps=EPS), max_consecutive_errors=5
  )
  params = _random_tree(0)
  state = opt.init(params)
  step = _jitted_step(opt)

  grads = _random_tree(1)
  expected = _reference(params, grads)
  params, state = step(params, state, grads)
  _assert_diagnostics(lars_optax.get_diagnostics(state), expected)
  kept = lars_optax.get_diagnostics(state)

  bad_grads = _random_tree(2)
  bad_grads["dense"]["bias"] = bad_grads["dense"]["bias"].at[0].set(jnp.nan)
  new_params, state = step(params, state, bad_grads)
  assert int(state.notfinite_count) == 1 and not bool(state.last_finite)
  jax.tree.map(np.testing.assert_array_equal, new_params, params)
  jax.tree.map(np.testing.assert_array_equal, lars_optax.get_diagnostics(state), kept)

  grads = _random_tree(3)
  expected = _reference(params, grads)
  _, state = step(params, state, grads)
  _assert_diagnostics(lars_optax.get_diagnostics(state), expected)


@pytest.mark.parametrize(
  "make_state",
  [
    pytest.param(lambda params: optax.sgd(0.1, momentum=0.9).init(params), id="sgd"),
    pytest.param(lambda params: optax.lars(0.1).init(params), id="optax.lars"),
    pytest.param(lambda params: (), id="empty"),
  ],
)
def test_get_diagnostics_without_lars_state_raises(make_state):
  with pytest.raises(ValueError, match=r"exactly one .* found 0"):
    lars_optax.get_diagnostics(make_state(_random_tree(0)))


def test_get_diagnostics_with_two_lars_states_raises_and_find_lists_them():
  params = _random_tree(0)
  opt = optax.chain(
    lars_optax.scale_by_trust_ratio(weight_decay=WD), lars_optax.lars(LR, trust_coefficient=ETA)
  )
  state = opt.init(params)
  with pytest.raises(ValueError, match=r"found 2 \(0/diagnostics, 1/diagnostics\)"):
    lars_optax.get_diagnostics(state)
  found = lars_optax.find_diagnostics(state)
  assert list(found) == ["0/diagnostics", "1/diagnostics"]
  assert all(isinstance(d, lars_optax.TrustRatioDiagnostics) for d in found.values())
  assert lars_optax.find_diagnostics(optax.sgd(0.1).init(params)) == {}


def test_flatten_diagnostics_keys_and_values():
  params, grads = _random_tree(0), _random_tree(1)
  opt = lars_optax.lars(LR, weight_decay=WD, trust_coefficient=ETA, eps=EPS)
  _, state = opt.update(grads, opt.init(params), params)
  diagnostics = lars_optax.get_diagnostics(state)
  flat = lars_optax.flatten_diagnostics(diagnostics)
  paths = ["conv/bias", "conv/kernel", "dense/bias", "dense/kernel"]
  fields = ["trust_ratio", "param_norm", "grad_norm"]
  assert list(flat) == [f"{field}/{path}" for field in fields for path in paths]
  expected = _reference(params, grads)
  for index, field in enumerate(fields):
    for path in paths:
      np.testing.assert_allclose(flat[f"{field}/{path}"], expected[path][index], rtol=1e-5, err_msg=path)
  dotted = lars_optax.flatten_diagnostics(diagnostics, separator=".")
  assert list(dotted) == [
    "trust_ratio.conv.bias",
    "trust_ratio.conv.kernel",
    "trust_ratio.dense.bias",
    "trust_ratio.dense.kernel",
    "param_norm.conv.bias",
    "param_norm.conv.kernel",
    "param_norm.dense.bias",
    "param_norm.dense.kernel",
    "grad_norm.conv.bias",
    "grad_norm.conv.kernel",
    "grad_norm.dense.bias",
    "grad_norm.dense.kernel",
  ]
  np.testing.assert_array_equal(list(dotted.values()), list(flat.values()))


@pytest.mark.parametrize("value", [None, {"kernel": 1.0}, 0.5])
def test_flatten_diagnostics_of_something_else_raises_type_error(value):
  with pytest.raises(TypeError, match="TrustRatioDiagnostics") as info:
    lars_optax.flatten_diagnostics(value)
  assert info.value.argument == "diagnostics"


def test_flatten_diagnostics_of_a_whole_state_raises_type_error():
  params = _random_tree(0)
  state = lars_optax.lars(LR).init(params)
  with pytest.raises(TypeError, match="get_diagnostics"):
    lars_optax.flatten_diagnostics(state)


def test_diagnostics_of_stacked_layers_are_per_slice():
  num_layers = 4
  shapes = {"blocks": {"kernel": (num_layers, 5, 6), "bias": (num_layers, 6)}}
  params, grads = _random_tree(0, shapes), _random_tree(1, shapes)
  opt = lars_optax.lars(LR, weight_decay=WD, trust_coefficient=ETA, eps=EPS, layer_axes=1)
  _, state = jax.jit(opt.update)(grads, opt.init(params), params)
  flat = lars_optax.flatten_diagnostics(lars_optax.get_diagnostics(state))
  for i in range(num_layers):
    layer = jax.tree.map(lambda x, i=i: x[i], (params, grads))
    expected = _reference(*layer, adapted={"blocks/kernel": True, "blocks/bias": False})
    for path, values in expected.items():
      for field, value in zip(("trust_ratio", "param_norm", "grad_norm"), values, strict=True):
        assert flat[f"{field}/{path}"].shape == (num_layers,)
        np.testing.assert_allclose(flat[f"{field}/{path}"][i], value, rtol=1e-5)


@pytest.mark.timeout(300)
def test_diagnostics_under_pmap():
  """Replicated state on 8 devices, pmean-ed gradients: a leading device axis, identical rows."""
  num_devices = jax.local_device_count()
  assert num_devices == 8, "tests/conftest.py sets 8 CPU devices"
  opt = lars_optax.lars(_schedule, weight_decay=WD, trust_coefficient=ETA, eps=EPS)

  def step(params, state, grads):
    grads = jax.lax.pmean(grads, axis_name="batch")
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  pstep = jax.pmap(step, axis_name="batch")
  replicate = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (num_devices, *jnp.shape(x))), tree)
  params = _random_tree(0)
  replicated_params, replicated_state = replicate(params), replicate(opt.init(params))
  for t in range(2):
    device_grads = _random_tree(10 + t, jax.tree.map(lambda s: (num_devices, *s), SHAPES, is_leaf=_is_shape))
    expected = _reference(params, jax.tree.map(lambda g: g.mean(axis=0), device_grads))
    replicated_params, replicated_state = pstep(replicated_params, replicated_state, device_grads)
    diagnostics = lars_optax.get_diagnostics(replicated_state)
    for key, value in lars_optax.flatten_diagnostics(diagnostics).items():
      assert value.shape == (num_devices,) and value.dtype == jnp.float32, key
      np.testing.assert_array_equal(value, np.full(num_devices, value[0]), err_msg=key)
    _assert_diagnostics(jax.tree.map(lambda x: x[0], diagnostics), expected)
    params = jax.tree.map(lambda x: x[0], replicated_params)


def _is_shape(x):
  return isinstance(x, tuple)


def test_bf16_params_give_float32_diagnostics():
  """bf16 weights and gradients: float32 diagnostics equal to the float64 norms of the bf16 values."""
  shapes = {"dense": {"kernel": (256, 128), "bias": (128,)}}
  params = _random_tree(0, shapes, jnp.bfloat16)
  grads = jax.tree.map(lambda g: g * 1e-2, _random_tree(1, shapes, jnp.bfloat16))
  opt = lars_optax.lars(LR, weight_decay=WD, trust_coefficient=ETA, eps=EPS)
  updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
  assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)
  expected = _reference(params, grads, adapted={"dense/kernel": True, "dense/bias": False})
  _assert_diagnostics(lars_optax.get_diagnostics(state), expected, rtol=2e-6)


@pytest.mark.parametrize("norm", ["paper", "update"])
def test_zero_norm_leaves_give_unit_trust_ratio(norm):
  """Zero kernel, zero gradient, both zero: λ = 1 (except a zero g with β > 0 under "update"), finite."""
  lr = 29.0  # MLPerf's peak LR at batch 32K: a zero kernel takes a raw step of γ.
  shapes = {name: (3, 4) for name in ("zero_kernel", "zero_grad", "both_zero", "normal")}
  params, grads = _random_tree(0, shapes), _random_tree(1, shapes)
  params = {**params, "zero_kernel": jnp.zeros((3, 4)), "both_zero": jnp.zeros((3, 4))}
  grads = {**grads, "zero_grad": jnp.zeros((3, 4)), "both_zero": jnp.zeros((3, 4))}
  opt = lars_optax.lars(lr, weight_decay=WD, trust_coefficient=ETA, eps=0.0, trust_ratio_norm=norm)
  updates, state = jax.jit(opt.update)(grads, opt.init(params), params)

  expected = _reference(params, grads, norm=norm, adapted=dict.fromkeys(shapes, True), eps=0.0)
  _assert_diagnostics(lars_optax.get_diagnostics(state), expected)
  flat = lars_optax.flatten_diagnostics(lars_optax.get_diagnostics(state))
  assert float(flat["trust_ratio/zero_kernel"]) == 1.0
  assert float(flat["trust_ratio/both_zero"]) == 1.0
  # A zero gradient: λ = 1 with the paper's ‖g‖; with ‖g + βw‖ = β‖w‖ > 0, λ = η/β.
  np.testing.assert_allclose(flat["trust_ratio/zero_grad"], 1.0 if norm == "paper" else ETA / WD, rtol=1e-6)
  assert all(np.isfinite(v).all() for v in [*flat.values(), *jax.tree.leaves(updates)])
  np.testing.assert_allclose(updates["zero_kernel"], -lr * grads["zero_kernel"], rtol=1e-6)
  np.testing.assert_array_equal(updates["both_zero"], np.zeros((3, 4)))


def test_diagnostics_on_nnx_optimizer():
  """nnx.Optimizer over `nnx.Param`: the diagnostics are found and flattened with NNX paths."""

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
      self.linear = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
      return self.linear(nnx.relu(self.conv(x)).mean(axis=(1, 2)))

  model = Net(nnx.Rngs(0))
  optimizer = nnx.Optimizer(
    model, lars_optax.lars(LR, weight_decay=WD, trust_coefficient=ETA, eps=EPS), wrt=nnx.Param
  )
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 2))
  params = nnx.state(model, nnx.Param)
  params = jax.tree.map(np.asarray, params)  # a copy before the in-place update
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
  optimizer.update(model, grads)

  diagnostics = lars_optax.get_diagnostics(optimizer.opt_state)
  adapted = {"conv/bias": False, "conv/kernel": True, "linear/bias": False, "linear/kernel": True}
  _assert_diagnostics(diagnostics, _reference(params, grads, adapted=adapted))
  assert sorted(lars_optax.flatten_diagnostics(diagnostics))[:4] == [
    "grad_norm/conv/bias",
    "grad_norm/conv/kernel",
    "grad_norm/linear/bias",
    "grad_norm/linear/kernel",
  ]


# ---------------------------------------------------------------------------------------------------------
# Regression guard, found while benchmarking: with the update norm, a shared g + βw feeding both the norm's
# reduction and the update made XLA store a full-size temporary (102 MB on ResNet-50: 3.6x SGD).


@pytest.mark.parametrize(
  "make_opt",
  [
    pytest.param(lambda: lars_optax.lars(LR, weight_decay=WD), id="paper"),
    pytest.param(lambda: lars_optax.lars(LR, weight_decay=WD, nesterov=True), id="paper-nesterov"),
    pytest.param(lambda: lars_optax.lars(LR, weight_decay=WD, trust_ratio_norm="update"), id="update"),
    pytest.param(
      lambda: lars_optax.lars(
        LR, weight_decay=WD, trust_ratio_norm="update", nesterov=True, learning_rate_placement="outside"
      ),
      id="update-nesterov-outside",
    ),
    pytest.param(
      lambda: optax.chain(
        lars_optax.scale_by_trust_ratio(weight_decay=WD, trust_ratio_norm="update"),
        optax.sgd(LR, momentum=0.9),
      ),
      id="chain-update",
    ),
  ],
)
def test_step_stores_no_full_size_temporary(make_opt):
  """Two-pass LARS needs no buffer as large as a layer besides w, g and v (all donated or inputs)."""
  if jax.default_backend() != "cpu":
    pytest.skip("XLA's temporary memory is backend-specific; checked on CPU")
  opt = make_opt()
  params = {"kernel": jnp.ones((256, 256)), "bias": jnp.ones(256)}
  step = jax.jit(_step(opt), donate_argnums=(0, 1))
  temp_bytes = step.lower(params, opt.init(params), params).compile().memory_analysis().temp_size_in_bytes
  assert temp_bytes < params["kernel"].nbytes, f"{temp_bytes} bytes of temporaries"
