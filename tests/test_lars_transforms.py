"""lars_optax.lars inside JAX and Optax machinery: jit, pmap, shardings, chain, MultiSteps,
inject_hyperparams, apply_if_finite, stacked layers and sharded leaves."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import lars_optax
from tests import lars_reference
from tests.lars_reference import NUM_STEPS, make_problem, run_lars, schedule

NUM_DEVICES = 8


def as_jnp(tree):
  return jax.tree.map(jnp.asarray, tree)


def test_pmap_step_on_device_different_shards_equals_one_device_on_the_mean_gradient():
  assert jax.local_device_count() == NUM_DEVICES
  params, _ = make_problem(30)
  rng = np.random.default_rng(30)
  per_device = {k: rng.normal(size=(NUM_DEVICES, *v.shape)).astype(np.float32) for k, v in params.items()}
  opt = lars_optax.lars(0.5, weight_decay=1e-3)

  def step(params, state, grad):
    grad = jax.lax.pmean(grad, "batch")
    updates, state = opt.update(grad, state, params)
    return optax.apply_updates(params, updates), state

  state = opt.init(as_jnp(params))
  replicate = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (NUM_DEVICES, *x.shape)), tree)
  new_params, new_state = jax.pmap(step, axis_name="batch")(
    replicate(as_jnp(params)), replicate(state), per_device
  )
  mean_grad = {k: v.mean(axis=0) for k, v in per_device.items()}
  expected, _ = run_lars(opt, params, [mean_grad])
  for k in params:
    for device in range(NUM_DEVICES):
      np.testing.assert_allclose(new_params[k][device], expected[k], rtol=1e-5, atol=1e-7)
  ratios = lars_optax.get_diagnostics(new_state).trust_ratio["dense/kernel"]
  assert ratios.shape == (NUM_DEVICES,) and np.all(ratios == ratios[0])


def test_sharded_params_under_jit_give_global_norms():
  mesh = Mesh(np.array(jax.devices()), ("model",))
  rng = np.random.default_rng(31)
  params = {"kernel": rng.normal(size=(16, 8)).astype(np.float32), "bias": np.ones(8, np.float32)}
  grads = {"kernel": rng.normal(size=(16, 8)).astype(np.float32), "bias": np.ones(8, np.float32)}
  shardings = {
    "kernel": NamedSharding(mesh, PartitionSpec("model", None)),
    "bias": NamedSharding(mesh, PartitionSpec()),
  }
  opt = lars_optax.lars(0.5, weight_decay=1e-3)
  sharded_params = jax.device_put(params, shardings)
  sharded_grads = jax.device_put(grads, shardings)
  updates, state = jax.jit(opt.update)(sharded_grads, opt.init(sharded_params), sharded_params)
  expected_updates, expected_state = opt.update(as_jnp(grads), opt.init(as_jnp(params)), as_jnp(params))
  chex.assert_trees_all_close(updates, expected_updates, rtol=1e-6)
  chex.assert_trees_all_close(
    lars_optax.get_diagnostics(state), lars_optax.get_diagnostics(expected_state), rtol=1e-6
  )
  assert state.momentum["kernel"].sharding.is_equivalent_to(shardings["kernel"], 2)


def test_axis_name_psums_norms_of_a_leaf_split_across_devices():
  rng = np.random.default_rng(32)
  kernel = rng.normal(size=(NUM_DEVICES * 2, 3)).astype(np.float32)
  grad = rng.normal(size=(NUM_DEVICES * 2, 3)).astype(np.float32)
  split = lambda x: x.reshape(NUM_DEVICES, 2, 3)
  sharded_opt = lars_optax.lars(0.5, weight_decay=1e-3, axis_name="shard")

  def step(w, g):
    params = {"kernel": w}
    updates, state = sharded_opt.update({"kernel": g}, sharded_opt.init(params), params)
    return updates["kernel"], lars_optax.get_diagnostics(state).trust_ratio["kernel"]

  updates, ratios = jax.pmap(step, axis_name="shard")(split(kernel), split(grad))
  whole_opt = lars_optax.lars(0.5, weight_decay=1e-3)
  params = {"kernel": jnp.asarray(kernel)}
  expected, state = whole_opt.update({"kernel": jnp.asarray(grad)}, whole_opt.init(params), params)
  np.testing.assert_allclose(np.asarray(updates).reshape(-1, 3), expected["kernel"], rtol=1e-5)
  expected_ratio = lars_optax.get_diagnostics(state).trust_ratio["kernel"]
  np.testing.assert_allclose(ratios, np.full(NUM_DEVICES, expected_ratio), rtol=1e-6)

  def local_ratio(w, g):
    opt = lars_optax.lars(0.5, weight_decay=1e-3)
    _, state = opt.update({"kernel": g}, opt.init({"kernel": w}), {"kernel": w})
    return lars_optax.get_diagnostics(state).trust_ratio["kernel"]

  without_psum = jax.pmap(local_ratio)(split(kernel), split(grad))
  assert not np.allclose(without_psum, expected_ratio, rtol=1e-3)  # the psum is what makes it global.


def test_stacked_layers_with_layer_axes_equal_separate_leaves():
  rng = np.random.default_rng(33)
  stacked = {
    "blocks/kernel": rng.normal(size=(3, 5, 4)).astype(np.float32),
    "blocks/bias": rng.normal(size=(3, 4)).astype(np.float32),
  }
  stacked_grads = [
    {k: rng.normal(size=v.shape).astype(np.float32) for k, v in stacked.items()} for _ in range(3)
  ]
  stacked_opt = lars_optax.lars(schedule, weight_decay=1e-3, layer_axes=1)
  final, state = run_lars(stacked_opt, stacked, stacked_grads)

  separate = {f"{k}/{i}": v[i] for k, v in stacked.items() for i in range(3)}
  separate_grads = [{f"{k}/{i}": g[k][i] for k in g for i in range(3)} for g in stacked_grads]
  expected, expected_state = run_lars(lars_optax.lars(schedule, weight_decay=1e-3), separate, separate_grads)
  for k in stacked:
    for i in range(3):
      np.testing.assert_allclose(final[k][i], expected[f"{k}/{i}"], rtol=1e-5, atol=1e-7)
  ratios = lars_optax.get_diagnostics(state).trust_ratio
  assert ratios["blocks/kernel"].shape == (3,)
  np.testing.assert_array_equal(ratios["blocks/bias"], 1.0)  # a stacked (L, C) bias stays excluded.
  expected_ratios = lars_optax.get_diagnostics(expected_state).trust_ratio
  np.testing.assert_allclose(
    ratios["blocks/kernel"], [expected_ratios[f"blocks/kernel/{i}"] for i in range(3)], rtol=1e-6
  )


def test_layer_axes_matches_numpy_per_slice_reference():
  rng = np.random.default_rng(34)
  params = {"stack": rng.normal(size=(2, 3, 4)).astype(np.float32)}
  grads = [{"stack": rng.normal(size=(2, 3, 4)).astype(np.float32)} for _ in range(NUM_STEPS)]
  hyper = lars_reference.Hyper(weight_decay=1e-2, nesterov=True)
  expected, _ = lars_reference.run(
    params, grads, [schedule(t) for t in range(NUM_STEPS)], {"stack": True}, hyper, {"stack": 1}
  )
  final, _ = run_lars(
    lars_optax.lars(schedule, weight_decay=1e-2, nesterov=True, layer_axes={"stack": 1}), params, grads
  )
  np.testing.assert_allclose(final["stack"], expected["stack"], rtol=2e-5, atol=1e-7)


def test_inside_chain_after_gradient_clipping():
  params, grads = make_problem(35)
  opt = optax.chain(optax.clip_by_global_norm(1.0), lars_optax.lars(schedule, weight_decay=1e-3))
  norms = [np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grad.values())) for grad in grads]
  clipped = [
    {k: g * min(1.0, 1.0 / n) for k, g in grad.items()} for grad, n in zip(grads, norms, strict=True)
  ]
  chex.assert_trees_all_close(
    run_lars(opt, params, grads)[0],
    run_lars(lars_optax.lars(schedule, weight_decay=1e-3), params, clipped)[0],
    rtol=1e-5,
    atol=1e-7,
  )


@pytest.mark.parametrize("every_k", [2, 3])
def test_multisteps_equals_one_step_on_the_mean_gradient(every_k):
  params, grads = make_problem(36)
  opt = lars_optax.lars(schedule, weight_decay=1e-3)
  micro = [grads[i % NUM_STEPS] for i in range(2 * every_k)]
  accumulated, state = run_lars(optax.MultiSteps(opt, every_k_schedule=every_k), params, micro)
  means = [
    {k: np.mean([g[k] for g in micro[s * every_k : (s + 1) * every_k]], axis=0) for k in params}
    for s in range(2)
  ]
  expected, expected_state = run_lars(opt, params, means)
  chex.assert_trees_all_close(accumulated, expected, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(
    lars_optax.get_diagnostics(state), lars_optax.get_diagnostics(expected_state), rtol=1e-5
  )


def test_inject_hyperparams_with_a_schedule_under_jit():
  params, grads = make_problem(37)
  injected = optax.inject_hyperparams(lars_optax.lars)(
    learning_rate=schedule, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.002
  )
  plain = lars_optax.lars(schedule, momentum=0.9, weight_decay=1e-3, trust_coefficient=0.002)
  final, state = run_lars(injected, params, grads)
  chex.assert_trees_all_close(final, run_lars(plain, params, grads)[0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(state.hyperparams["learning_rate"], schedule(NUM_STEPS - 1), rtol=1e-6)

  # Changing a hyperparameter in the state changes the step exactly as a new optimizer would.
  state.hyperparams["weight_decay"] = jnp.asarray(0.1)
  new_params = jax.tree.map(jnp.asarray, params)
  updates, _ = jax.jit(injected.update)(as_jnp(grads[0]), state, new_params)
  reference_state = lars_optax.lars(0.0, weight_decay=0.1).init(new_params)
  reference = lars_optax.lars(schedule(NUM_STEPS), momentum=0.9, weight_decay=0.1, trust_coefficient=0.002)
  expected, _ = reference.update(
    as_jnp(grads[0]), reference_state._replace(momentum=state.inner_state.momentum), new_params
  )
  chex.assert_trees_all_close(updates, expected, rtol=1e-5, atol=1e-7)


def test_apply_if_finite_skips_a_nan_step_and_keeps_state():
  params, grads = make_problem(38)
  opt = optax.apply_if_finite(lars_optax.lars(0.3, weight_decay=1e-3), max_consecutive_errors=3)
  bad = dict(grads[1])
  bad["dense/kernel"] = np.full_like(bad["dense/kernel"], np.nan)
  with_bad, state = run_lars(opt, params, [grads[0], bad, grads[2]])
  without_bad, _ = run_lars(lars_optax.lars(0.3, weight_decay=1e-3), params, [grads[0], grads[2]])
  chex.assert_trees_all_close(with_bad, without_bad, rtol=1e-6, atol=1e-7)
  assert int(state.total_notfinite) == 1


def test_eager_and_jit_agree():
  params, grads = make_problem(39)
  opt = lars_optax.lars(schedule, weight_decay=1e-3, nesterov=True)
  state = opt.init(as_jnp(params))
  eager_updates, _ = opt.update(as_jnp(grads[0]), state, as_jnp(params))
  jit_updates, _ = jax.jit(opt.update)(as_jnp(grads[0]), state, as_jnp(params))
  chex.assert_trees_all_close(eager_updates, jit_updates, rtol=1e-6)


def test_donated_buffers_work():
  params, grads = make_problem(40)
  opt = lars_optax.lars(0.2, weight_decay=1e-3)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, state, grad):
    updates, state = opt.update(grad, state, params)
    return optax.apply_updates(params, updates), state

  p, s = as_jnp(params), opt.init(as_jnp(params))
  for grad in grads:
    p, s = step(p, s, as_jnp(grad))
  chex.assert_trees_all_close(p, run_lars(opt, params, grads)[0], rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: lars_optax.lars(0.1), lambda: lars_optax.scale_by_trust_ratio()])
def test_eager_init_state_can_be_donated(make):
  # Every diagnostics field holds its own buffers, so a state built outside jit can be donated whole.
  state = make().init({"w": jnp.ones((3, 3)), "b": jnp.zeros(3)})
  bumped = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)(state)
  assert int(bumped.count) == 1
  assert float(bumped.diagnostics.trust_ratio["w"]) == 1.0
