"""LARS (You, Gitman & Ginsburg 2017, Algorithm 1) as one fused Optax transformation, with its variants."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lars_optax import _masks, _trust_ratio, _validation

LEARNING_RATE_PLACEMENTS = ("inside", "outside")


class LarsState(NamedTuple):
  """State of :func:`lars`: one momentum buffer the size of the parameters, a counter and diagnostics."""

  count: jax.Array  # int32 scalar: number of updates so far; γ_t is evaluated at it before it increments.
  momentum: optax.Updates  # v, like params, in ``accumulator_dtype`` (default: the parameters' dtype).
  diagnostics: _trust_ratio.TrustRatioDiagnostics  # λ, ‖w‖, ‖g‖ of the last update, float32 per layer.


def lars(
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: Any = 0.9,
  weight_decay: Any = 0.0,
  trust_coefficient: Any = 0.001,
  eps: Any = 0.0,
  nesterov: bool = False,
  mask: _masks.Mask = None,
  trust_clip: bool = False,
  trust_ratio_norm: str = "paper",
  learning_rate_placement: str = "inside",
  excluded_lr_scale: Any = 1.0,
  layer_axes: _masks.LayerAxes = None,
  accumulator_dtype: Any | None = None,
  axis_name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""LARS: momentum SGD with a layer-wise trust ratio; the default is exactly the paper's Algorithm 1.

  For each adapted leaf (a "layer": weights w, gradient g of the loss *without* weight decay) at step t,
  with global learning rate γ_t, momentum m, weight decay β, trust coefficient η:

      λ   = η ‖w‖ / (‖g‖ + β ‖w‖ + ε)          local LR (eq. 6); 1 where ‖w‖ = 0 or ‖g‖ = 0
      v_t = m v_{t-1} + γ_t λ (g + β w)        LR and trust ratio inside the buffer (Algorithm 1)
      w  <- w - v_t

  Excluded leaves (``mask`` False; by default every leaf whose per-layer rank is ≤ 1: biases, batch-norm
  scale and offset) get plain momentum SGD with no weight decay and no trust ratio, at the global LR times
  ``excluded_lr_scale`` = s: v_t = m v_{t-1} + s γ_t g.

  Variants (options; the defaults give the paper):

  ====================================  =====================================================  ===========
  option                                update of an adapted leaf (d = g + β w)                used by
  ====================================  =====================================================  ===========
  default                               v = m v + γ_t λ d;            Δw = -v                  paper, MLPerf
  ``trust_ratio_norm="update"``         λ = η‖w‖/(‖d‖ + ε); 1 where ‖w‖ or ‖d‖ is 0            optax, SimCLR
  ``learning_rate_placement="outside"`` v = m v + λ d;                Δw = -γ_t v              timm, BYOL
  ``trust_clip=True`` (LARC)            rate min(λ, γ_t) replaces γ_t λ (inside), or           apex LARC
                                        min(λ/γ_t, 1) replaces λ (outside)
  ``nesterov=True``                     Δw = -(m v_t + γ_t λ d) (inside),                      optax, timm
                                        Δw = -γ_t (m v_t + λ d) (outside)
  ====================================  =====================================================  ===========

  In full, with r_t the per-leaf rate (γ_t λ, LARC min(λ, γ_t), excluded s γ_t) and ρ_t its outside form
  (λ, LARC min(λ/γ_t, 1), excluded 1), d_t = g + β w for adapted and g for excluded leaves:

      inside:   v_t = m v_{t-1} + r_t d_t;  Δw = -v_t,  Nesterov Δw = -(m v_t + r_t d_t)
      outside:  v_t = m v_{t-1} + ρ_t d_t;  Δw = -c γ_t v_t,  Nesterov Δw = -c γ_t (m v_t + ρ_t d_t)

  with c = s for excluded leaves and 1 otherwise. Inside and outside differ only when γ_t changes.

  Zero norms: λ = 1 where ‖w‖ = 0 or the denominator's gradient norm is 0, so a zero-initialised kernel
  takes a raw step of γ_t (times 1, not η): with MLPerf's γ_0 = 29 that is a large first step, by design of
  the convention (MLPerf, timm, Flax). No NaN or Inf is formed.

  Numerics: norms are accumulated in float32 whatever the parameter dtype, and the update is computed in
  float32 then cast to the gradient dtype; the momentum buffer is kept in ``accumulator_dtype``.

  Diagnostics: after each update, ``state.diagnostics`` (see :func:`lars_optax.get_diagnostics`) holds per
  layer λ (before LARC's clip; 1 for excluded leaves), ‖w‖ before the update, and ‖g‖ (``"paper"`` and
  excluded leaves) or ‖g + βw‖ (``"update"``). Under ``optax.MultiSteps`` they change only on real steps;
  under ``optax.apply_if_finite`` a skipped step keeps the previous values.

  Args:
    learning_rate: γ_t, a float or an Optax schedule (evaluated at the count before it increments).
    momentum: m in [0, 1).
    weight_decay: β ≥ 0, applied by the optimizer to adapted leaves (keep it out of the loss).
    trust_coefficient: η > 0 (the paper keeps 0.001).
    eps: ε ≥ 0 in the trust ratio's denominator.
    nesterov: Nesterov momentum, as in the formulas above.
    mask: which leaves are adapted: ``None`` (per-layer rank > 1), a pytree of bools with the structure of
      the parameters, or a callable mapping the parameters to one (e.g. :func:`lars_optax.exclude_names`).
    trust_clip: LARC: the effective per-layer rate is min(λ, γ_t) instead of γ_t λ.
    trust_ratio_norm: ``"paper"`` (‖g‖ + β‖w‖) or ``"update"`` (‖g + βw‖) in the denominator.
    learning_rate_placement: ``"inside"`` the momentum buffer (paper) or ``"outside"`` it.
    excluded_lr_scale: s ≥ 0, the LR multiplier of excluded leaves (1: the global LR, as MLPerf).
    layer_axes: leading axes of a leaf that index stacked layers (int, pytree of ints, or callable);
      norms and trust ratios are then per slice and the default mask looks at the rank of one slice.
    accumulator_dtype: dtype of the momentum buffer (default: each parameter's dtype).
    axis_name: a ``pmap``/``shard_map`` axis over which every leaf is split (FSDP/ZeRO); squared norms are
      summed over it so that each trust ratio is that of the whole leaf. Leave it ``None`` under ``jit``
      with shardings, where norms are global automatically.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params)`` requires ``params``.

  Raises:
    ValueError: at construction, for a negative learning rate or weight decay, momentum outside [0, 1), a
      non-positive trust coefficient, a negative eps or excluded_lr_scale, or an unknown option name.

  Example:
    >>> import jax, jax.numpy as jnp, optax, lars_optax
    >>> params = {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}
    >>> loss = lambda p: jnp.mean((jnp.ones((8, 4)) @ p["kernel"] + p["bias"] - 1.0) ** 2)
    >>> opt = lars_optax.lars(1.0, weight_decay=1e-4, trust_coefficient=0.1)
    >>> state = opt.init(params)
    >>> for _ in range(20):
    ...   grads = jax.grad(loss)(params)
    ...   updates, state = opt.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> bool(loss(params) < 0.1)
    True

  References:
    You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
    https://arxiv.org/abs/1708.03888 (Algorithm 1, eq. 6).
    Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017,
    https://arxiv.org/abs/1706.02677 (LR inside vs outside the momentum buffer).
  """
  if not callable(learning_rate):
    _validation.check_at_least("learning_rate", learning_rate, 0.0)
  _validation.check_momentum("momentum", momentum)
  _validation.check_bool("nesterov", nesterov)
  _validation.check_choice("learning_rate_placement", learning_rate_placement, LEARNING_RATE_PLACEMENTS)
  _validation.check_at_least("excluded_lr_scale", excluded_lr_scale, 0.0)
  _trust_ratio.check_trust_ratio_args(
    weight_decay=weight_decay,
    trust_coefficient=trust_coefficient,
    eps=eps,
    trust_ratio_norm=trust_ratio_norm,
    trust_clip=trust_clip,
  )
  inside = learning_rate_placement == "inside"

  def init_fn(params: Any) -> LarsState:
    _masks.resolve_mask(mask, params, layer_axes)
    axes = _masks.resolve_layer_axes(layer_axes, params)
    buffers = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=accumulator_dtype), params)
    return LarsState(
      count=jnp.zeros([], jnp.int32),
      momentum=buffers,
      diagnostics=_trust_ratio.init_diagnostics(params, axes),
    )

  def leaf_rate(grad, param, adapted, k, lr):
    """(rate of g, rate of w, Δw multiplier, λ, ‖w‖, ‖g‖) of one leaf, in float32: r d = r g + r β w."""
    ratio, param_norm, grad_norm = _trust_ratio.trust_ratio(
      param,
      grad,
      weight_decay=weight_decay,
      trust_coefficient=trust_coefficient,
      eps=eps,
      trust_ratio_norm=trust_ratio_norm,
      layer_axes=k,
      axis_name=axis_name,
      adapted=adapted,
    )
    if not adapted:
      rate, scale = (excluded_lr_scale * lr, -1.0) if inside else (1.0, -excluded_lr_scale * lr)
      return rate, None, scale, ratio, param_norm, grad_norm
    if inside:
      rate, scale = (jnp.minimum(ratio, lr) if trust_clip else lr * ratio), -1.0
    else:
      rate, scale = (_trust_ratio.clipped_ratio(ratio, lr) if trust_clip else ratio), -lr
    rate = _trust_ratio.expand_to(rate, grad)
    return rate, rate * weight_decay, scale, ratio, param_norm, grad_norm

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(_validation.NO_PARAMS_MSG)
    flags = _masks.resolve_mask(mask, params, layer_axes)
    axes = _masks.resolve_layer_axes(layer_axes, params)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def update_leaf(grad, param, velocity, adapted, k):
      grad_rate, param_rate, scale, ratio, param_norm, grad_norm = leaf_rate(grad, param, adapted, k, lr)

      def add_step(base):  # base + r d, as base + r g + (r β) w
        # Not r (g + β w) shared by several consumers: XLA would store it as a full-size temporary.
        total = base + grad_rate * grad.astype(jnp.float32)
        return total if param_rate is None else total + param_rate * param.astype(jnp.float32)

      new_velocity = add_step(momentum * velocity.astype(jnp.float32))  # v <- m v + r d
      descent = add_step(momentum * new_velocity) if nesterov else new_velocity
      new_update = (scale * descent).astype(grad.dtype)  # Δw = -v (inside) or -γ v (outside)
      return new_update, new_velocity.astype(velocity.dtype), ratio, param_norm, grad_norm

    results = jax.tree.map(update_leaf, updates, params, state.momentum, flags, axes)
    new_updates, new_momentum, *diagnostics = _trust_ratio.unzip_leaf_results(results, updates, 5)
    return new_updates, LarsState(
      count=optax.safe_increment(state.count),
      momentum=new_momentum,
      diagnostics=_trust_ratio.TrustRatioDiagnostics(*diagnostics),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
