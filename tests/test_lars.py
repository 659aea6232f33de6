"""lars_optax.lars against the independent NumPy re-derivation, plus its properties and input checks."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_optax
from tests import lars_reference
from tests.lars_reference import NUM_STEPS, make_problem, run_lars, schedule

VARIANTS = {
  "paper": dict(weight_decay=5e-4),
  "paper_nesterov": dict(weight_decay=5e-4, nesterov=True),
  "paper_eps": dict(weight_decay=0.0, eps=1e-3, trust_coefficient=0.02),
  "update_norm": dict(weight_decay=5e-4, trust_ratio_norm="update"),
  "update_norm_nesterov": dict(weight_decay=1e-2, trust_ratio_norm="update", nesterov=True),
  "outside": dict(weight_decay=5e-4, placement="outside"),
  "outside_nesterov": dict(weight_decay=5e-4, placement="outside", nesterov=True),
  "larc_inside": dict(weight_decay=5e-4, trust_clip=True, trust_coefficient=0.02),
  "larc_outside": dict(weight_decay=5e-4, trust_clip=True, placement="outside", trust_coefficient=0.02),
  "larc_nesterov": dict(weight_decay=5e-4, trust_clip=True, nesterov=True, trust_coefficient=0.02),
  "excluded_scale_inside": dict(weight_decay=5e-4, excluded_lr_scale=0.1),
  "excluded_scale_outside_nesterov": dict(
    weight_decay=5e-4, excluded_lr_scale=0.1, placement="outside", nesterov=True
  ),
  "high_momentum": dict(weight_decay=1e-4, momentum=0.99, trust_coefficient=0.01),
}


def to_kwargs(h: lars_reference.Hyper) -> dict:
  kwargs = dataclasses.asdict(h)
  kwargs["learning_rate_placement"] = kwargs.pop("placement")
  return kwargs


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_matches_numpy_rederivation(name):
  hyper = lars_reference.Hyper(**VARIANTS[name])
  params, grads = make_problem()
  mask = {k: v.ndim > 1 for k, v in params.items()}
  learning_rates = [schedule(t) for t in range(NUM_STEPS)]
  expected, expected_ratios = lars_reference.run(params, grads, learning_rates, mask, hyper)

  final, state = run_lars(lars_optax.lars(schedule, **to_kwargs(hyper)), params, grads)

  chex.assert_trees_all_close(final, expected, rtol=2e-5, atol=1e-6)
  ratios = lars_optax.get_diagnostics(state).trust_ratio
  chex.assert_trees_all_close(ratios, expected_ratios[-1], rtol=2e-5)


def test_custom_mask_adapts_a_bias_and_excludes_a_kernel():
  hyper = lars_reference.Hyper(weight_decay=1e-3)
  params, grads = make_problem(1)
  mask = {k: v.ndim > 1 for k, v in params.items()}
  mask["dense/bias"], mask["conv/kernel"] = True, False
  learning_rates = [schedule(t) for t in range(NUM_STEPS)]
  expected, _ = lars_reference.run(params, grads, learning_rates, mask, hyper)
  final, _ = run_lars(lars_optax.lars(schedule, mask=mask, **to_kwargs(hyper)), params, grads)
  chex.assert_trees_all_close(final, expected, rtol=2e-5, atol=1e-6)


def test_callable_mask_equals_the_same_pytree_mask():
  params, grads = make_problem(2)
  as_tree = {k: "bn" not in k for k in params}
  by_tree, _ = run_lars(lars_optax.lars(0.3, weight_decay=1e-3, mask=as_tree), params, grads)
  by_name, _ = run_lars(
    lars_optax.lars(0.3, weight_decay=1e-3, mask=lars_optax.exclude_names("bn")), params, grads
  )
  chex.assert_trees_all_equal(by_tree, by_name)


def test_zero_initialised_kernel_takes_a_raw_gamma_step_at_lr_29():
  params = {"kernel": jnp.zeros((3, 2))}
  grad = {"kernel": jnp.array([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]])}
  opt = lars_optax.lars(29.0, weight_decay=1e-4)
  updates, state = opt.update(grad, opt.init(params), params)
  # λ = 1 because ‖w‖ = 0, so Δw = -γ (g + β·0) = -29 g.
  np.testing.assert_allclose(updates["kernel"], -29.0 * grad["kernel"], rtol=1e-6)
  assert float(lars_optax.get_diagnostics(state).trust_ratio["kernel"]) == 1.0


@pytest.mark.parametrize("trust_ratio_norm", ["paper", "update"])
def test_zero_gradient_gives_trust_ratio_one_and_no_nan(trust_ratio_norm):
  params = {"kernel": jnp.full((3, 2), 2.0), "zero": jnp.zeros((2, 2))}
  grad = {"kernel": jnp.zeros((3, 2)), "zero": jnp.zeros((2, 2))}
  opt = lars_optax.lars(0.5, weight_decay=0.0, trust_ratio_norm=trust_ratio_norm)
  updates, state = jax.jit(opt.update)(grad, opt.init(params), params)
  diagnostics = lars_optax.get_diagnostics(state)
  for leaf in jax.tree.leaves((updates, diagnostics)):
    assert np.all(np.isfinite(leaf))
  assert float(diagnostics.trust_ratio["kernel"]) == 1.0
  assert float(diagnostics.trust_ratio["zero"]) == 1.0
  np.testing.assert_array_equal(updates["kernel"], 0.0)


def test_zero_gradient_with_weight_decay_is_a_pure_decay_step():
  # Paper norm: ‖g‖ = 0, so λ = 1 and Δw = -γ β w.
  params = {"kernel": jnp.full((3, 2), 2.0)}
  opt = lars_optax.lars(0.5, weight_decay=0.1)
  updates, _ = opt.update({"kernel": jnp.zeros((3, 2))}, opt.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.5 * 0.1 * 2.0, rtol=1e-6)


@pytest.mark.parametrize("scale", [1e-3, 0.5, 7.0, 1e4])
def test_update_is_invariant_to_gradient_scale_when_weight_decay_and_eps_are_zero(scale):
  params, grads = make_problem(3)
  mask = {k: True for k in params}
  params["zero/kernel"][:] = 1.0
  opt = lars_optax.lars(schedule, mask=mask, momentum=0.9)
  reference, _ = run_lars(opt, params, grads)
  scaled, _ = run_lars(opt, params, [{k: scale * g for k, g in grad.items()} for grad in grads])
  chex.assert_trees_all_close(scaled, reference, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("placement", ["inside", "outside"])
def test_excluded_leaves_equal_optax_sgd(nesterov, placement):
  params, grads = make_problem(4)
  mask = {k: False for k in params}
  ours, _ = run_lars(
    lars_optax.lars(
      schedule, mask=mask, weight_decay=0.1, nesterov=nesterov, learning_rate_placement=placement
    ),
    params,
    grads,
  )
  sgd, _ = run_lars(optax.sgd(schedule, momentum=0.9, nesterov=nesterov), params, grads)
  if placement == "outside":  # the same arithmetic as optax.sgd: equal to the last bit or nearly.
    chex.assert_trees_all_close(ours, sgd, rtol=1e-7, atol=1e-7)
  else:  # LR inside the buffer differs from optax.sgd only when γ changes: compare at constant γ.
    ours_const, _ = run_lars(
      lars_optax.lars(0.3, mask=mask, weight_decay=0.1, nesterov=nesterov), params, grads
    )
    sgd_const, _ = run_lars(optax.sgd(0.3, momentum=0.9, nesterov=nesterov), params, grads)
    chex.assert_trees_all_close(ours_const, sgd_const, rtol=1e-6, atol=1e-7)


def test_inside_and_outside_placements_agree_at_constant_lr_and_differ_when_it_changes():
  params, grads = make_problem(5)
  inside_const, _ = run_lars(lars_optax.lars(0.4, weight_decay=1e-3), params, grads)
  outside_const, _ = run_lars(
    lars_optax.lars(0.4, weight_decay=1e-3, learning_rate_placement="outside"), params, grads
  )
  chex.assert_trees_all_close(inside_const, outside_const, rtol=1e-5, atol=1e-7)
  inside, _ = run_lars(lars_optax.lars(schedule, weight_decay=1e-3), params, grads)
  outside, _ = run_lars(
    lars_optax.lars(schedule, weight_decay=1e-3, learning_rate_placement="outside"), params, grads
  )
  assert not np.allclose(inside["dense/kernel"], outside["dense/kernel"], rtol=1e-4)


def test_larc_caps_the_rate_at_the_global_lr():
  # A tiny gradient makes λ huge; LARC's effective rate is then min(λ, γ) = γ.
  params = {"kernel": jnp.ones((4, 4))}
  grad = {"kernel": jnp.full((4, 4), 1e-9)}
  opt = lars_optax.lars(0.1, trust_clip=True, momentum=0.0, trust_coefficient=0.02)
  updates, _ = opt.update(grad, opt.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * 1e-9, rtol=1e-5)


def test_state_holds_one_momentum_buffer_plus_scalars():
  params, _ = make_problem()
  state = lars_optax.lars(0.1).init(jax.tree.map(jnp.asarray, params))
  num_params = sum(p.size for p in params.values())
  assert isinstance(state, lars_optax.LarsState)
  chex.assert_trees_all_equal_shapes(state.momentum, params)
  others = jax.tree.leaves((state.count, state.diagnostics))
  assert all(leaf.ndim == 0 for leaf in others)
  assert sum(leaf.size for leaf in jax.tree.leaves(state)) == num_params + len(others)
  assert state.count.dtype == jnp.int32


def test_bf16_params_get_float32_norms_and_keep_their_dtype():
  rng = np.random.default_rng(6)
  w32 = rng.normal(size=(64, 32)).astype(np.float32)
  g32 = (rng.normal(size=(64, 32)) * 1e-2).astype(np.float32)
  params = {"kernel": jnp.asarray(w32, jnp.bfloat16)}
  grads = {"kernel": jnp.asarray(g32, jnp.bfloat16)}
  opt = lars_optax.lars(0.5, weight_decay=1e-4, accumulator_dtype=jnp.float32)
  state = opt.init(params)
  updates, state = jax.jit(opt.update)(grads, state, params)
  assert updates["kernel"].dtype == jnp.bfloat16
  assert state.momentum["kernel"].dtype == jnp.float32
  w = np.asarray(params["kernel"], np.float64)
  g = np.asarray(grads["kernel"], np.float64)
  lam, _, _ = lars_reference.slice_trust_ratio(w, g, lars_reference.Hyper(weight_decay=1e-4))
  ratio = lars_optax.get_diagnostics(state).trust_ratio["kernel"]
  assert ratio.dtype == jnp.float32
  np.testing.assert_allclose(float(ratio), lam, rtol=1e-5)
  np.testing.assert_allclose(
    np.asarray(state.momentum["kernel"]), 0.5 * lam * (g + 1e-4 * w), rtol=1e-5, atol=1e-9
  )


def test_default_accumulator_dtype_follows_the_parameters():
  params = {"kernel": jnp.ones((2, 2), jnp.bfloat16), "bias": jnp.ones(2, jnp.float32)}
  state = lars_optax.lars(0.1).init(params)
  assert state.momentum["kernel"].dtype == jnp.bfloat16
  assert state.momentum["bias"].dtype == jnp.float32


def test_update_requires_params():
  opt = lars_optax.lars(0.1)
  params = {"kernel": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="params"):
    opt.update(params, opt.init(params))


@pytest.mark.parametrize(
  ("kwargs", "argument"),
  [
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(weight_decay=-1e-4), "weight_decay"),
    (dict(momentum=1.0), "momentum"),
    (dict(momentum=-0.1), "momentum"),
    (dict(trust_coefficient=0.0), "trust_coefficient"),
    (dict(trust_coefficient=-1e-3), "trust_coefficient"),
    (dict(eps=-1e-8), "eps"),
    (dict(excluded_lr_scale=-1.0), "excluded_lr_scale"),
    (dict(trust_ratio_norm="adam"), "trust_ratio_norm"),
    (dict(learning_rate_placement="middle"), "learning_rate_placement"),
    (dict(weight_decay=float("nan")), "weight_decay"),
  ],
)
def test_bad_hyperparameters_raise_at_construction(kwargs, argument):
  kwargs = {"learning_rate": 0.1, **kwargs}
  with pytest.raises(ValueError, match=argument):
    lars_optax.lars(**kwargs)


@pytest.mark.parametrize("flag", ["nesterov", "trust_clip"])
def test_non_bool_flags_raise_type_error(flag):
  with pytest.raises(TypeError, match=flag):
    lars_optax.lars(0.1, **{flag: 1})


def test_mask_with_wrong_structure_raises_at_init():
  opt = lars_optax.lars(0.1, mask={"kernel": True})
  with pytest.raises(ValueError, match="mask"):
    opt.init({"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)})


def test_layer_axes_out_of_range_raises():
  with pytest.raises(ValueError, match="layer_axes"):
    lars_optax.lars(0.1, layer_axes=3).init({"kernel": jnp.ones((2, 2))})


def test_array_hyperparameters_give_the_same_steps_as_floats():
  params, grads = make_problem(7)
  as_floats = lars_optax.lars(0.3, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.002, eps=1e-6)
  as_arrays = lars_optax.lars(
    jnp.asarray(0.3),
    momentum=jnp.asarray(0.9),
    weight_decay=np.float32(1e-3),
    trust_coefficient=np.asarray(0.002),
    eps=jnp.asarray(1e-6),
    excluded_lr_scale=jnp.asarray(1.0),
  )
  expected, _ = lars_reference.run(
    params,
    grads,
    [0.3] * NUM_STEPS,
    {k: v.ndim > 1 for k, v in params.items()},
    lars_reference.Hyper(weight_decay=1e-3, trust_coefficient=0.002, eps=1e-6),
  )
  chex.assert_trees_all_close(run_lars(as_arrays, params, grads)[0], expected, rtol=2e-5, atol=1e-6)
  chex.assert_trees_all_close(
    run_lars(as_arrays, params, grads)[0], run_lars(as_floats, params, grads)[0], rtol=1e-6, atol=1e-7
  )


def test_traced_hyperparameters_construct_under_jit():
  params, grads = make_problem(8)
  params, grad = jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, grads[0])

  @jax.jit
  def traced_step(learning_rate, weight_decay, momentum):
    opt = lars_optax.lars(learning_rate, weight_decay=weight_decay, momentum=momentum)
    return opt.update(grad, opt.init(params), params)[0]

  opt = lars_optax.lars(0.2, weight_decay=1e-3, momentum=0.8)
  expected = opt.update(grad, opt.init(params), params)[0]
  chex.assert_trees_all_close(traced_step(0.2, 1e-3, 0.8), expected, rtol=1e-6, atol=1e-7)
