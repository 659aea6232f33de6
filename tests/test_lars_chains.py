"""Which Optax chain equals which LARS variant, and the README's table of other libraries' LARS.

Each library's algorithm is re-derived here in plain NumPy the way that library writes it (per parameter,
weight decay folded into the gradient, its own momentum form), then compared with the lars_optax arguments
that the README says reproduce it.
"""

import chex
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_optax
from tests.lars_reference import NUM_STEPS, make_problem, run_lars, schedule


def rank_mask(params):
  return {k: np.ndim(v) > 1 for k, v in params.items()}


@pytest.mark.parametrize("nesterov", [False, True])
def test_trust_ratio_then_sgd_is_lars_with_lr_outside(nesterov):
  params, grads = make_problem(10)
  chained = optax.chain(
    lars_optax.scale_by_trust_ratio(weight_decay=5e-4),
    optax.sgd(schedule, momentum=0.9, nesterov=nesterov),
  )
  fused = lars_optax.lars(schedule, weight_decay=5e-4, nesterov=nesterov, learning_rate_placement="outside")
  chex.assert_trees_all_close(
    run_lars(chained, params, grads)[0], run_lars(fused, params, grads)[0], rtol=1e-6, atol=1e-7
  )


@pytest.mark.parametrize("nesterov", [False, True])
def test_trust_ratio_then_lr_then_trace_is_the_paper(nesterov):
  params, grads = make_problem(11)
  chained = optax.chain(
    lars_optax.scale_by_trust_ratio(weight_decay=5e-4, trust_ratio_norm="paper"),
    optax.scale_by_learning_rate(schedule),
    optax.trace(decay=0.9, nesterov=nesterov),
  )
  fused = lars_optax.lars(schedule, weight_decay=5e-4, nesterov=nesterov)
  chex.assert_trees_all_close(
    run_lars(chained, params, grads)[0], run_lars(fused, params, grads)[0], rtol=1e-6, atol=1e-7
  )


def test_larc_piece_then_sgd_is_lars_outside_with_trust_clip():
  params, grads = make_problem(12)
  chained = optax.chain(
    lars_optax.scale_by_trust_ratio(
      weight_decay=5e-4, trust_coefficient=0.02, trust_clip=True, learning_rate=schedule
    ),
    optax.sgd(schedule, momentum=0.9),
  )
  fused = lars_optax.lars(
    schedule,
    weight_decay=5e-4,
    trust_coefficient=0.02,
    trust_clip=True,
    learning_rate_placement="outside",
  )
  chex.assert_trees_all_close(
    run_lars(chained, params, grads)[0], run_lars(fused, params, grads)[0], rtol=1e-6, atol=1e-7
  )


def test_decaying_before_the_trust_ratio_gives_the_update_norm_variant():
  # The trap the docstring warns about: add_decayed_weights first feeds g + βw into the denominator.
  params, grads = make_problem(13)
  mask = rank_mask(params)
  chained = optax.chain(
    optax.add_decayed_weights(1e-2, mask),
    lars_optax.scale_by_trust_ratio(weight_decay=0.0),
    optax.sgd(schedule, momentum=0.9),
  )
  update_norm = lars_optax.lars(
    schedule, weight_decay=1e-2, trust_ratio_norm="update", learning_rate_placement="outside"
  )
  paper = lars_optax.lars(schedule, weight_decay=1e-2, learning_rate_placement="outside")
  chained_params = run_lars(chained, params, grads)[0]
  chex.assert_trees_all_close(chained_params, run_lars(update_norm, params, grads)[0], rtol=1e-6, atol=1e-7)
  assert not np.allclose(chained_params["dense/kernel"], run_lars(paper, params, grads)[0]["dense/kernel"])


def test_scale_by_trust_ratio_needs_a_learning_rate_for_trust_clip():
  with pytest.raises(ValueError, match="learning_rate"):
    lars_optax.scale_by_trust_ratio(trust_clip=True)


@pytest.mark.parametrize("nesterov", [False, True])
def test_update_norm_variant_equals_optax_lars(nesterov):
  params, grads = make_problem(14)
  mask = rank_mask(params)
  theirs = optax.lars(
    schedule,
    weight_decay=1e-3,
    weight_decay_mask=mask,
    trust_coefficient=0.001,
    eps=1e-9,
    trust_ratio_mask=mask,
    momentum=0.9,
    nesterov=nesterov,
  )
  ours = lars_optax.lars(
    schedule, weight_decay=1e-3, eps=1e-9, nesterov=nesterov, trust_ratio_norm="update", mask=mask
  )
  chex.assert_trees_all_close(
    run_lars(ours, params, grads)[0], run_lars(theirs, params, grads)[0], rtol=1e-6, atol=1e-7
  )


# ---- The README's variant table: other libraries' algorithms, re-derived as each writes it. ----


def timm_lars(params, grads, lr, *, momentum, weight_decay, trust_coeff, eps, trust_clip, no_decay):
  """timm ``Lars.step`` (timm/optim/lars.py): adapts a parameter only when its group has weight decay.

  Parameters in ``no_decay`` sit in a group with weight_decay=0, as timm's param_groups_weight_decay does
  for biases and norms, so they get plain momentum SGD.
  """
  w = {k: np.array(v, np.float64) for k, v in params.items()}
  buf = {k: None for k in w}
  for g_t in grads:
    for k in w:
      grad = np.array(g_t[k], np.float64)
      wd = 0.0 if k in no_decay else weight_decay
      if wd != 0:
        w_norm, g_norm = np.linalg.norm(w[k]), np.linalg.norm(grad)
        ratio = trust_coeff * w_norm / (g_norm + w_norm * wd + eps)
        ratio = ratio if (w_norm > 0 and g_norm > 0) else 1.0
        if trust_clip:
          ratio = min(ratio / lr, 1.0)
        grad = (grad + wd * w[k]) * ratio
      buf[k] = grad.copy() if buf[k] is None else momentum * buf[k] + grad
      w[k] = w[k] - lr * buf[k]
  return w


def apex_larc(params, grads, lr, *, momentum, weight_decay, trust_coefficient, eps, clip):
  """apex ``LARC`` around ``torch.optim.SGD`` (apex/parallel/LARC.py): every parameter is adapted."""
  w = {k: np.array(v, np.float64) for k, v in params.items()}
  buf = {k: None for k in w}
  for g_t in grads:
    for k in w:
      grad = np.array(g_t[k], np.float64)
      p_norm, g_norm = np.linalg.norm(w[k]), np.linalg.norm(grad)
      if p_norm != 0 and g_norm != 0:
        adaptive_lr = trust_coefficient * p_norm / (g_norm + p_norm * weight_decay + eps)
        if clip:
          adaptive_lr = min(adaptive_lr / lr, 1.0)
        grad = (grad + weight_decay * w[k]) * adaptive_lr
      buf[k] = grad.copy() if buf[k] is None else momentum * buf[k] + grad
      w[k] = w[k] - lr * buf[k]
  return w


def mlperf_tf_lars(params, grads, lrs, *, momentum, weight_decay, eeta, epsilon, skip):
  """MLPerf ResNet-50 reference ``LARSOptimizer`` (TF): LR and trust ratio inside the momentum."""
  w = {k: np.array(v, np.float64) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for g_t, lr in zip(grads, lrs, strict=True):
    for k in w:
      grad = np.array(g_t[k], np.float64)
      if k in skip:
        scaled_lr, decayed = lr, grad
      else:
        w_norm, g_norm = np.linalg.norm(w[k]), np.linalg.norm(grad)
        trust = eeta * w_norm / (g_norm + weight_decay * w_norm + epsilon)
        trust = trust if (w_norm > 0 and g_norm > 0) else 1.0
        scaled_lr, decayed = lr * trust, grad + weight_decay * w[k]
      v[k] = momentum * v[k] + scaled_lr * decayed
      w[k] = w[k] - v[k]
  return w


def simclr_lars(params, grads, lrs, *, momentum, weight_decay, eeta, skip):
  """SimCLR ``LARSOptimizer`` (TF): weight decay folded first, ‖g + βw‖ in the ratio, LR inside."""
  w = {k: np.array(v, np.float64) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for g_t, lr in zip(grads, lrs, strict=True):
    for k in w:
      grad = np.array(g_t[k], np.float64)
      if k not in skip:
        grad = grad + weight_decay * w[k]
        w_norm, g_norm = np.linalg.norm(w[k]), np.linalg.norm(grad)
        trust = eeta * w_norm / g_norm if (w_norm > 0 and g_norm > 0) else 1.0
      else:
        trust = 1.0
      v[k] = momentum * v[k] + lr * trust * grad
      w[k] = w[k] - v[k]
  return w


def byol_lars(params, grads, lrs, *, momentum, weight_decay, eta, skip):
  """BYOL (JAX): add_weight_decay -> scale_by_lars (ratio on g + βw, then momentum) -> -lr."""
  w = {k: np.array(v, np.float64) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  for g_t, lr in zip(grads, lrs, strict=True):
    for k in w:
      grad = np.array(g_t[k], np.float64)
      if k not in skip:
        grad = grad + weight_decay * w[k]
        w_norm, g_norm = np.linalg.norm(w[k]), np.linalg.norm(grad)
        grad = grad * (eta * w_norm / g_norm if (w_norm > 0 and g_norm > 0) else 1.0)
      v[k] = momentum * v[k] + grad
      w[k] = w[k] - lr * v[k]
  return w


def test_timm_lars_row():
  params, grads = make_problem(20)
  no_decay = {k for k, v in params.items() if v.ndim <= 1}
  expected = timm_lars(
    params, grads, 0.2, momentum=0.9, weight_decay=1e-4, trust_coeff=0.001, eps=1e-8,
    trust_clip=False, no_decay=no_decay,
  )  # fmt: skip
  ours = lars_optax.lars(0.2, momentum=0.9, weight_decay=1e-4, eps=1e-8, learning_rate_placement="outside")
  chex.assert_trees_all_close(run_lars(ours, params, grads)[0], expected, rtol=2e-5, atol=1e-7)


def test_timm_lars_trust_clip_row():
  params, grads = make_problem(21)
  no_decay = {k for k, v in params.items() if v.ndim <= 1}
  expected = timm_lars(
    params, grads, 0.2, momentum=0.9, weight_decay=1e-4, trust_coeff=0.02, eps=1e-8,
    trust_clip=True, no_decay=no_decay,
  )  # fmt: skip
  ours = lars_optax.lars(
    0.2, weight_decay=1e-4, trust_coefficient=0.02, eps=1e-8, trust_clip=True,
    learning_rate_placement="outside",
  )  # fmt: skip
  chex.assert_trees_all_close(run_lars(ours, params, grads)[0], expected, rtol=2e-5, atol=1e-7)


def test_apex_larc_row():
  params, grads = make_problem(22)
  params["zero/kernel"][:] = 0.5  # apex skips weight decay where a norm is 0; we do not (documented).
  expected = apex_larc(
    params, grads, 0.1, momentum=0.9, weight_decay=5e-4, trust_coefficient=0.02, eps=1e-8, clip=True
  )
  all_adapted = {k: True for k in params}
  ours = lars_optax.lars(
    0.1, weight_decay=5e-4, trust_coefficient=0.02, eps=1e-8, trust_clip=True,
    learning_rate_placement="outside", mask=all_adapted,
  )  # fmt: skip
  chex.assert_trees_all_close(run_lars(ours, params, grads)[0], expected, rtol=2e-5, atol=1e-7)


def test_mlperf_row():
  params, grads = make_problem(23)
  skip = {k for k, v in params.items() if v.ndim <= 1}
  lrs = [schedule(t) for t in range(NUM_STEPS)]
  expected = mlperf_tf_lars(
    params, grads, lrs, momentum=0.9, weight_decay=1e-4, eeta=0.001, epsilon=0.0, skip=skip
  )
  ours = lars_optax.lars(schedule, momentum=0.9, weight_decay=1e-4, trust_coefficient=0.001)
  chex.assert_trees_all_close(run_lars(ours, params, grads)[0], expected, rtol=2e-5, atol=1e-7)


def test_simclr_row():
  params, grads = make_problem(24)
  skip = {k for k in params if "bias" in k or "bn" in k}
  lrs = [schedule(t) for t in range(NUM_STEPS)]
  expected = simclr_lars(params, grads, lrs, momentum=0.9, weight_decay=1e-2, eeta=0.001, skip=skip)
  ours = lars_optax.lars(
    schedule, weight_decay=1e-2, trust_ratio_norm="update", mask=lars_optax.exclude_names("bias", "bn")
  )
  chex.assert_trees_all_close(run_lars(ours, params, grads)[0], expected, rtol=2e-5, atol=1e-7)


def test_byol_row():
  params, grads = make_problem(25)
  skip = {k for k, v in params.items() if v.ndim <= 1}
  lrs = [schedule(t) for t in range(NUM_STEPS)]
  expected = byol_lars(params, grads, lrs, momentum=0.9, weight_decay=1.5e-2, eta=0.001, skip=skip)
  ours = lars_optax.lars(
    schedule, weight_decay=1.5e-2, trust_ratio_norm="update", learning_rate_placement="outside"
  )
  chex.assert_trees_all_close(run_lars(ours, params, grads)[0], expected, rtol=2e-5, atol=1e-7)


def test_paper_variant_equals_timm_at_constant_lr():
  # Inside and outside placements differ only when γ changes (lars docstring; Goyal et al. 2017, sec. 2):
  # with a constant γ the paper variant equals timm's Lars (LR outside the buffer) step for step.
  params, grads = make_problem(26)
  no_decay = {k for k, v in params.items() if v.ndim <= 1}
  expected = timm_lars(
    params, grads, 0.3, momentum=0.9, weight_decay=5e-4, trust_coeff=0.001, eps=0.0,
    trust_clip=False, no_decay=no_decay,
  )  # fmt: skip
  ours = lars_optax.lars(0.3, weight_decay=5e-4)
  chex.assert_trees_all_close(run_lars(ours, params, grads)[0], expected, rtol=2e-5, atol=1e-7)


def test_chain_diagnostics_are_found_and_match_the_fused_optimizer():
  params, grads = make_problem(27)
  chained = optax.chain(lars_optax.scale_by_trust_ratio(weight_decay=5e-4), optax.sgd(schedule, momentum=0.9))
  fused = lars_optax.lars(schedule, weight_decay=5e-4, learning_rate_placement="outside")
  _, chained_state = run_lars(chained, params, grads)
  _, fused_state = run_lars(fused, params, grads)
  chex.assert_trees_all_close(
    lars_optax.get_diagnostics(chained_state), lars_optax.get_diagnostics(fused_state), rtol=1e-6
  )
  assert jnp.all(lars_optax.get_diagnostics(chained_state).trust_ratio["dense/kernel"] != 1.0)
