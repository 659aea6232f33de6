"""The Optax conformance matrix: each variant of ``lars`` and ``scale_by_trust_ratio``, the same checks.

Each case is an optimizer factory of ``(learning_rate, weight_decay)`` and the settings of the independent
NumPy re-derivation (tests/lars_reference.py) that it must follow, so that every check compares behaviour
with that re-derivation (or with a closed form), never the code with itself:

- no recompilation on the second and third ``update`` under ``jit`` (traces counted);
- dtype preservation: bf16 and f32 parameters and updates keep their dtype, norms are taken in float32;
- ``init`` under ``jax.eval_shape`` on ``jax.ShapeDtypeStruct`` parameters;
- ``optax.inject_hyperparams`` with a schedule, under ``jit``;
- ``optax.MultiSteps``: k micro-steps equal one step on the mean gradient;
- parameters sharded over 8 CPU devices with ``NamedSharding``: the steps of the unsharded re-derivation;
- convergence on an ill-conditioned quadratic.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import lars_optax
from tests import lars_reference
from tests.lars_reference import Hyper

WEIGHT_DECAY, ETA = 1e-2, 0.02


def _lars(**options):
  def make(learning_rate, weight_decay):
    return lars_optax.lars(learning_rate, weight_decay=weight_decay, trust_coefficient=ETA, **options)

  return make


def _trust_ratio_then_sgd(trust_clip=False):
  def make(learning_rate, weight_decay):
    clip = {"trust_clip": True, "learning_rate": learning_rate} if trust_clip else {}
    return optax.chain(
      lars_optax.scale_by_trust_ratio(weight_decay=weight_decay, trust_coefficient=ETA, **clip),
      optax.sgd(learning_rate, momentum=0.9),
    )

  return make


# name: (factory of (learning_rate, weight_decay), reference settings, decayed leaves: as the mask, or "all")
CASES = {
  "lars": (_lars(), Hyper(), "adapted"),
  "lars-nesterov": (_lars(nesterov=True), Hyper(nesterov=True), "adapted"),
  "lars-larc": (_lars(trust_clip=True), Hyper(trust_clip=True), "adapted"),
  "lars-outside": (_lars(learning_rate_placement="outside"), Hyper(placement="outside"), "adapted"),
  "lars-update-norm": (_lars(trust_ratio_norm="update"), Hyper(trust_ratio_norm="update"), "adapted"),
  "lars-weight-decay-mask": (_lars(weight_decay_mask=lars_optax.every_leaf_mask), Hyper(), "all"),
  "scale_by_trust_ratio": (_trust_ratio_then_sgd(), Hyper(placement="outside"), "adapted"),
  "scale_by_trust_ratio-larc": (
    _trust_ratio_then_sgd(trust_clip=True),
    Hyper(placement="outside", trust_clip=True),
    "adapted",
  ),
}
NAMES = sorted(CASES)


def _reference(name, params, grads, learning_rates):
  """The NumPy re-derivation's final parameters for case ``name``."""
  _, hyper, decayed = CASES[name]
  hyper = Hyper(**{**hyper.__dict__, "weight_decay": WEIGHT_DECAY, "trust_coefficient": ETA})
  mask = {k: np.ndim(v) > 1 for k, v in params.items()}
  decay_mask = dict.fromkeys(params, True) if decayed == "all" else mask
  return lars_reference.run(params, grads, learning_rates, mask, hyper, decay_mask=decay_mask)[0]


def _make(name, learning_rate=lars_reference.schedule):
  return CASES[name][0](learning_rate, WEIGHT_DECAY)


def _problem(seed=0, shapes=None):
  rng = np.random.default_rng(seed)
  shapes = shapes or {
    "conv/kernel": (3, 3, 2, 8),
    "dense/kernel": (8, 16),
    "dense/bias": (16,),
    "bn/scale": (8,),
  }
  params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  grads = [
    {k: (rng.normal(size=s) * 10.0 ** rng.uniform(-2, 1)).astype(np.float32) for k, s in shapes.items()}
    for _ in range(lars_reference.NUM_STEPS)
  ]
  return params, grads


def _learning_rates():
  return [lars_reference.schedule(t) for t in range(lars_reference.NUM_STEPS)]


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_and_second_update_does_not_recompile(name):
  params, grads = _problem()
  opt = _make(name)
  traces = []

  @jax.jit
  def step(params, state, grad):
    traces.append(1)
    updates, state = opt.update(grad, state, params)
    return optax.apply_updates(params, updates), state

  p, state = jax.tree.map(jnp.asarray, params), opt.init(jax.tree.map(jnp.asarray, params))
  for grad in grads:
    p, state = step(p, state, grad)
  assert len(traces) == 1
  chex.assert_trees_all_close(p, _reference(name, params, grads, _learning_rates()), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("name", NAMES)
def test_dtypes_are_preserved_and_norms_are_float32(name, dtype):
  params, grads = _problem(1)
  params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  grad = jax.tree.map(lambda x: jnp.asarray(x, dtype), grads[0])
  opt = _make(name, 0.5)
  updates, state = jax.jit(opt.update)(grad, opt.init(params), params)
  assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
  ratios = lars_optax.get_diagnostics(state).trust_ratio
  assert all(r.dtype == jnp.float32 for r in jax.tree.leaves(ratios))
  # λ of the bf16 values, from a float64 NumPy norm: a norm accumulated in bf16 would be off by ~1e-3.
  hyper = Hyper(
    weight_decay=WEIGHT_DECAY, trust_coefficient=ETA, trust_ratio_norm=CASES[name][1].trust_ratio_norm
  )
  w, g = (np.asarray(x["dense/kernel"], np.float64) for x in (params, grad))
  np.testing.assert_allclose(
    ratios["dense/kernel"], lars_reference.slice_trust_ratio(w, g, hyper)[0], rtol=1e-5
  )


@pytest.mark.parametrize("name", NAMES)
def test_init_on_shape_dtype_structs(name):
  params, _ = _problem()
  structs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), params)
  abstract = jax.eval_shape(_make(name).init, structs)
  concrete = _make(name).init(jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.bfloat16), params))
  assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
  for a, c in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete), strict=True):
    assert (a.shape, a.dtype) == (c.shape, c.dtype)
  counts = [leaf for leaf in jax.tree.leaves(abstract) if leaf.dtype == jnp.int32]
  assert counts and all(leaf.shape == () for leaf in counts)


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_with_a_schedule_under_jit(name):
  params, grads = _problem(2)
  opt = optax.inject_hyperparams(CASES[name][0])(
    learning_rate=lars_reference.schedule, weight_decay=WEIGHT_DECAY
  )
  final, state = lars_reference.run_lars(opt, params, grads)
  chex.assert_trees_all_close(final, _reference(name, params, grads, _learning_rates()), rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(state.hyperparams["learning_rate"], lars_reference.schedule(len(grads) - 1))


@pytest.mark.parametrize("name", NAMES)
def test_multisteps_equals_steps_on_the_mean_gradient(name):
  k = 3
  params, grads = _problem(3)
  micro = [jax.tree.map(lambda g, i=i: g * (1.0 + 0.5 * i), grad) for grad in grads for i in range(k)]
  final, _ = lars_reference.run_lars(optax.MultiSteps(_make(name), every_k_schedule=k), params, micro)
  mean = [jax.tree.map(lambda g: g * np.float32(1.5), grad) for grad in grads]  # mean of 1, 1.5, 2
  chex.assert_trees_all_close(final, _reference(name, params, mean, _learning_rates()), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_sharded_parameters_on_8_devices_follow_the_reference(name):
  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
  params, grads = _problem(4)
  specs = {
    "conv/kernel": PartitionSpec(None, None, "model", "data"),
    "dense/kernel": PartitionSpec("data", "model"),
    "dense/bias": PartitionSpec("model"),
    "bn/scale": PartitionSpec(),
  }
  shardings = {k: NamedSharding(mesh, spec) for k, spec in specs.items()}
  opt = _make(name)
  p = jax.device_put(params, shardings)
  state = jax.jit(opt.init)(p)
  step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*opt.update(g, s, p)))
  for grad in grads:
    p, state = step(p, state, jax.device_put(grad, shardings))
  assert p["dense/kernel"].sharding.is_equivalent_to(shardings["dense/kernel"], 2)
  chex.assert_trees_all_close(p, _reference(name, params, grads, _learning_rates()), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_an_ill_conditioned_quadratic(name):
  # Two layers whose scales differ by 1e3 (and a bias); each layer's rate follows its own norm.
  targets = {"small": jnp.full((4, 4), 1e-3), "large": jnp.full((4, 4), 1.0), "bias": jnp.full((4,), 0.5)}
  params = {"small": jnp.full((4, 4), 2e-3), "large": jnp.full((4, 4), 2.0), "bias": jnp.zeros(4)}

  def loss(p):
    return sum(jnp.sum((p[k] - targets[k]) ** 2) / jnp.sum(targets[k] ** 2) for k in p)

  opt = CASES[name][0](optax.cosine_decay_schedule(1.0, 300), 0.0)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    updates, state = opt.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  initial = float(loss(params))
  for _ in range(300):
    params, state = step(params, state)
  assert float(loss(params)) < 1e-3 * initial
