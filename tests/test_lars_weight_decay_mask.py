"""``weight_decay_mask``: weight decay and layer adaptation chosen separately, leaf by leaf.

Every case is checked against the independent NumPy re-derivation (tests/lars_reference.py), which applies
the four per-leaf rules as stated: adapted and decayed (β in λ and d), adapted not decayed (β = 0 in both),
excluded and decayed (momentum SGD on g + βw at s·γ_t), excluded not decayed (momentum SGD on g).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_optax
from tests import lars_reference
from tests.lars_reference import NUM_STEPS, make_problem, run_lars, schedule

# Each leaf of make_problem() in one of the four cases (the zero kernel adapted, not decayed).
ADAPTED = {
  "conv/kernel": True,
  "dense/kernel": True,
  "dense/bias": False,
  "bn/scale": False,
  "zero/kernel": True,
}
DECAYED = {
  "conv/kernel": True,
  "dense/kernel": False,
  "dense/bias": True,
  "bn/scale": False,
  "zero/kernel": False,
}

VARIANTS = {
  "paper": dict(),
  "nesterov": dict(nesterov=True),
  "larc": dict(trust_clip=True, trust_coefficient=0.02),
  "larc_outside_nesterov": dict(trust_clip=True, trust_coefficient=0.02, placement="outside", nesterov=True),
  "outside": dict(placement="outside"),
  "update_norm": dict(trust_ratio_norm="update"),
  "update_norm_eps": dict(trust_ratio_norm="update", eps=1e-3),
  "excluded_scale": dict(excluded_lr_scale=0.1),
  "excluded_scale_outside": dict(excluded_lr_scale=0.1, placement="outside"),
}


def _kwargs(h: lars_reference.Hyper) -> dict:
  return dict(
    momentum=h.momentum,
    weight_decay=h.weight_decay,
    trust_coefficient=h.trust_coefficient,
    eps=h.eps,
    nesterov=h.nesterov,
    trust_clip=h.trust_clip,
    trust_ratio_norm=h.trust_ratio_norm,
    learning_rate_placement=h.placement,
    excluded_lr_scale=h.excluded_lr_scale,
  )


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_four_cases_match_numpy_rederivation(name):
  # A large β, so that a decay applied to the wrong leaf shows far above the tolerance.
  hyper = lars_reference.Hyper(weight_decay=0.05, **VARIANTS[name])
  params, grads = make_problem(seed=1)
  learning_rates = [schedule(t) for t in range(NUM_STEPS)]
  expected, expected_ratios = lars_reference.run(
    params, grads, learning_rates, ADAPTED, hyper, decay_mask=DECAYED
  )

  opt = lars_optax.lars(schedule, mask=ADAPTED, weight_decay_mask=DECAYED, **_kwargs(hyper))
  final, state = run_lars(opt, params, grads)

  chex.assert_trees_all_close(final, expected, rtol=2e-5, atol=1e-6)
  chex.assert_trees_all_close(lars_optax.get_diagnostics(state).trust_ratio, expected_ratios[-1], rtol=2e-5)


@pytest.mark.parametrize("placement", ["inside", "outside"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_four_cases_under_layer_axes(placement, nesterov):
  """Stacked leaves: one per-slice trust ratio per layer, decayed or not as a whole leaf."""
  rng = np.random.default_rng(3)
  shapes = {"stack/kernel": (3, 4, 5), "stack/bias": (3, 5), "head/kernel": (5, 2), "head/bias": (2,)}
  params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(NUM_STEPS)]
  layer_axes = {"stack/kernel": 1, "stack/bias": 1, "head/kernel": 0, "head/bias": 0}
  adapted = {"stack/kernel": True, "stack/bias": False, "head/kernel": True, "head/bias": False}
  decayed = {"stack/kernel": False, "stack/bias": True, "head/kernel": True, "head/bias": False}
  hyper = lars_reference.Hyper(weight_decay=0.05, nesterov=nesterov, placement=placement, trust_clip=True)
  learning_rates = [schedule(t) for t in range(NUM_STEPS)]
  expected, ratios = lars_reference.run(params, grads, learning_rates, adapted, hyper, layer_axes, decayed)

  opt = lars_optax.lars(
    schedule, mask=adapted, weight_decay_mask=decayed, layer_axes=layer_axes, **_kwargs(hyper)
  )
  final, state = run_lars(opt, params, grads)

  chex.assert_trees_all_close(final, expected, rtol=2e-5, atol=1e-6)
  assert lars_optax.get_diagnostics(state).trust_ratio["stack/kernel"].shape == (3,)
  chex.assert_trees_all_close(lars_optax.get_diagnostics(state).trust_ratio, ratios[-1], rtol=2e-5)


@pytest.mark.parametrize("mask", [None, lars_optax.every_leaf_mask, dict(ADAPTED)])
def test_none_follows_mask(mask):
  """weight_decay_mask=None gives exactly the steps of weight_decay_mask=<the same leaves as mask>."""
  params, grads = make_problem()
  same = lars_optax.rank_mask(params) if mask is None else (mask(params) if callable(mask) else mask)
  default, _ = run_lars(lars_optax.lars(schedule, weight_decay=0.05, mask=mask), params, grads)
  explicit, _ = run_lars(
    lars_optax.lars(schedule, weight_decay=0.05, mask=mask, weight_decay_mask=same), params, grads
  )
  chex.assert_trees_all_equal(default, explicit)


def test_excluded_and_decayed_leaf_is_momentum_sgd_on_decayed_gradient():
  """A closed form: an excluded, decayed bias follows optax.sgd on g + βw at s·γ (one leaf, one chain)."""
  params = {"kernel": jnp.ones((3, 2)), "bias": jnp.full((2,), 0.5)}
  grads = {"kernel": jnp.full((3, 2), 0.1), "bias": jnp.array([0.2, -0.3])}
  opt = lars_optax.lars(
    0.7, weight_decay=0.1, excluded_lr_scale=0.5, weight_decay_mask=lars_optax.every_leaf_mask
  )
  reference = optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.35, momentum=0.9))
  p, q = params["bias"], params["bias"]
  state, ref_state = opt.init(params), reference.init(p)
  for _ in range(3):
    updates, state = opt.update(grads, state, {**params, "bias": p})
    p = p + updates["bias"]
    ref_updates, ref_state = reference.update(grads["bias"], ref_state, q)
    q = q + ref_updates
  np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)


def test_scale_by_trust_ratio_four_cases():
  """u = λd (adapted; β = 0 in λ and d when not decayed), u = g + βw or g (excluded), in NumPy."""
  params, grads = make_problem(seed=2)
  grad = grads[0]
  beta, eta = 0.05, 0.01
  opt = lars_optax.scale_by_trust_ratio(
    weight_decay=beta, trust_coefficient=eta, mask=ADAPTED, weight_decay_mask=DECAYED
  )
  jparams = jax.tree.map(jnp.asarray, params)
  updates, _ = jax.jit(opt.update)(jax.tree.map(jnp.asarray, grad), opt.init(jparams), jparams)
  for name, w in params.items():
    w, g = w.astype(np.float64), grad[name].astype(np.float64)
    b = beta if DECAYED[name] else 0.0
    d = g + b * w
    if ADAPTED[name]:
      w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
      ratio = 1.0 if w_norm == 0 or g_norm == 0 else eta * w_norm / (g_norm + b * w_norm)
      d = ratio * d
    np.testing.assert_allclose(updates[name], d, rtol=2e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("transform", [lars_optax.lars, lars_optax.scale_by_trust_ratio])
def test_bad_weight_decay_mask_names_the_argument(transform):
  args = (0.1,) if transform is lars_optax.lars else ()
  with pytest.raises(TypeError, match="weight_decay_mask") as info:
    transform(*args, weight_decay_mask="bias")
  assert info.value.argument == "weight_decay_mask"
  opt = transform(*args, weight_decay_mask={"kernel": True})
  with pytest.raises(ValueError, match="weight_decay_mask") as info:
    opt.init({"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)})
  assert info.value.argument == "weight_decay_mask"
