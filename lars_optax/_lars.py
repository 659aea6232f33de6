"""LARS (You, Gitman & Ginsburg 2017, Algorithm 1) as one fused Optax transformation, with its variants."""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike, DTypeLike

from lars_optax import _masks, _trust_ratio, _validation
from lars_optax._trust_ratio import LeafRates, TrustRatioDiagnostics
from lars_optax._validation import Scalar

LearningRatePlacement = Literal["inside", "outside"]
"""Where γ_t multiplies: ``"inside"`` the momentum buffer (the paper's Algorithm 1) or ``"outside"`` it."""
LEARNING_RATE_PLACEMENTS: tuple[str, ...] = get_args(LearningRatePlacement)


class LarsState(NamedTuple):
  """State of :func:`lars`: one momentum buffer the size of the parameters, a counter and diagnostics."""

  count: jax.Array  # type: ignore[assignment]  # int32 scalar: updates so far (Optax's name); γ_t is taken at it.
  momentum: optax.Updates  # v, like params, in ``accumulator_dtype`` (default: the parameters' dtype).
  diagnostics: TrustRatioDiagnostics  # λ, ‖w‖, ‖g‖ of the last update, float32 (float64) per layer.


def lars(
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: ArrayLike = 0.9,
  weight_decay: ArrayLike = 0.0,
  trust_coefficient: ArrayLike = 0.001,
  eps: ArrayLike = 0.0,
  nesterov: bool = False,
  mask: _masks.Mask = None,
  weight_decay_mask: _masks.Mask = None,
  trust_clip: bool = False,
  trust_ratio_norm: _trust_ratio.TrustRatioNorm = "paper",
  learning_rate_placement: LearningRatePlacement = "inside",
  excluded_lr_scale: ArrayLike = 1.0,
  layer_axes: _masks.LayerAxes = None,
  accumulator_dtype: DTypeLike | None = None,
  axis_name: _trust_ratio.MaybeAxisName = None,
) -> optax.GradientTransformationExtraArgs:
  r"""LARS: momentum SGD with a layer-wise trust ratio; the default is exactly the paper's Algorithm 1.

  For each adapted leaf (a "layer": weights w, gradient g of the loss *without* weight decay) at step t,
  with global learning rate γ_t, momentum m, weight decay β, trust coefficient η:

  .. math::

    \lambda = \frac{\eta \lVert w \rVert}{\lVert g \rVert + \beta \lVert w \rVert + \epsilon}
      \quad \text{(eq. 6; 1 where } \lVert w \rVert = 0 \text{ or } \lVert g \rVert = 0\text{)}

    v_t = m\, v_{t-1} + \gamma_t \lambda\, (g + \beta w), \qquad w \leftarrow w - v_t
      \quad \text{(Algorithm 1: LR and trust ratio inside the buffer)}

  Excluded leaves (``mask`` False; by default every leaf whose per-layer rank is ≤ 1: biases, batch-norm
  scale and offset) get plain momentum SGD with no trust ratio, at the global LR times
  ``excluded_lr_scale`` = s: :math:`v_t = m\, v_{t-1} + s \gamma_t g`. That suits batch-norm networks
  (MLPerf's ResNet-50). Without batch norm, a bias stepped by plain SGD at a LARS-sized γ_0 (≥ 1) can
  wreck training; there pass ``mask=lars_optax.every_leaf_mask`` (every layer's weights and biases
  adapted, as the paper's Algorithm 1 reads) or a small ``excluded_lr_scale``.

  Weight decay and adaptation chosen separately (``weight_decay_mask``; ``None`` follows ``mask``). Per
  leaf, with d the direction the momentum buffer accumulates:

  ===============================  =====================================================================
  leaf                             step
  ===============================  =====================================================================
  adapted, decayed (default)       λ = η‖w‖/(‖g‖ + β‖w‖ + ε), d = g + βw, rate γ_t λ
  adapted, not decayed             β = 0 in λ and d: λ = η‖w‖/(‖g‖ + ε), d = g, rate γ_t λ
  excluded, decayed                plain momentum SGD on d = g + βw at rate s γ_t (no trust ratio)
  excluded, not decayed (default)  plain momentum SGD on d = g at rate s γ_t
  ===============================  =====================================================================

  The variants below apply to these rates as written for the default cases.

  Variants (options; the defaults give the paper):

  ======================================  =====================================================  =============
  option                                  update of an adapted leaf (d = g + β w)                used by
  ======================================  =====================================================  =============
  default                                 v = m v + γ_t λ d;            Δw = -v                  paper, MLPerf
  ``trust_ratio_norm="update"``           λ = η‖w‖/(‖d‖ + ε); 1 where ‖w‖ or ‖d‖ is 0            optax, SimCLR
  ``learning_rate_placement="outside"``   v = m v + λ d;                Δw = -γ_t v              timm, BYOL
  ``trust_clip=True`` (LARC)              rate min(λ, γ_t) replaces γ_t λ (inside), or           apex LARC
                                          min(λ/γ_t, 1) replaces λ (outside)
  ``nesterov=True``                       Δw = -(m v_t + γ_t λ d) (inside),                      optax, timm
                                          Δw = -γ_t (m v_t + λ d) (outside)
  ======================================  =====================================================  =============

  In full, with r_t the per-leaf rate (γ_t λ, LARC min(λ, γ_t), excluded s γ_t) and ρ_t its outside form
  (λ, LARC min(λ/γ_t, 1), excluded 1), d_t = g + β w for decayed and g for other leaves:

  .. math::

    \text{inside:}\quad v_t = m\, v_{t-1} + r_t d_t, \quad \Delta w = -v_t
      \quad \text{(Nesterov: } \Delta w = -(m\, v_t + r_t d_t)\text{)}

    \text{outside:}\quad v_t = m\, v_{t-1} + \rho_t d_t, \quad \Delta w = -c \gamma_t v_t
      \quad \text{(Nesterov: } \Delta w = -c \gamma_t (m\, v_t + \rho_t d_t)\text{)}

  with c = s for excluded leaves and 1 otherwise. Inside and outside differ only when γ_t changes.

  Zero norms: λ = 1 where ‖w‖ = 0 or the denominator's gradient norm is 0, so a zero-initialised kernel
  takes a raw step of γ_t (times 1, not η): with MLPerf's γ_0 = 29 that is a large first step, by design of
  the convention (MLPerf, timm, Flax). No NaN or Inf is formed.

  Numerics: norms are accumulated in float32 whatever the parameter dtype (float64 for float64 parameters),
  and the update is computed in float32 (float64) then cast to the gradient dtype; the momentum buffer is
  kept in ``accumulator_dtype``.

  Diagnostics: after each update, ``state.diagnostics`` (see :func:`lars_optax.get_diagnostics`) holds per
  layer λ (before LARC's clip; 1 for excluded leaves), ‖w‖ before the update, and ‖g‖ (``"paper"`` and
  excluded leaves) or ‖g + βw‖ (``"update"``). Under ``optax.MultiSteps`` they change only on real steps;
  under ``optax.apply_if_finite`` a skipped step keeps the previous values.

  Args:
    learning_rate: γ_t ≥ 0, a float or an Optax schedule (evaluated at the count before it increments).
    momentum: m in [0, 1).
    weight_decay: β ≥ 0, applied by the optimizer to the leaves of ``weight_decay_mask`` (keep it out of
      the loss).
    trust_coefficient: η > 0 (the paper keeps 0.001).
    eps: ε ≥ 0 in the trust ratio's denominator.
    nesterov: Nesterov momentum, as in the formulas above.
    mask: which leaves are adapted: ``None`` (per-layer rank > 1), a pytree of bools with the structure of
      the parameters, or a callable mapping the parameters to one (e.g. :func:`lars_optax.exclude_names`).
    weight_decay_mask: which leaves get weight decay, in the same forms as ``mask``; ``None`` (default):
      the leaves of ``mask``. See the table of the four cases above.
    trust_clip: LARC: the effective per-layer rate is min(λ, γ_t) instead of γ_t λ.
    trust_ratio_norm: ``"paper"`` (‖g‖ + β‖w‖) or ``"update"`` (‖g + βw‖) in the denominator.
    learning_rate_placement: ``"inside"`` the momentum buffer (paper) or ``"outside"`` it.
    excluded_lr_scale: s ≥ 0, the LR multiplier of excluded leaves (1: the global LR, as MLPerf).
    layer_axes: leading axes of a leaf that index stacked layers (int, pytree of ints, or callable);
      norms and trust ratios are then per slice and the default mask looks at the rank of one slice.
    accumulator_dtype: floating-point dtype of the momentum buffer (default: each parameter's dtype).
    axis_name: a ``pmap``/``shard_map`` axis over which every leaf is split (FSDP/ZeRO); squared norms are
      summed over it so that each trust ratio is that of the whole leaf. Leave it ``None`` under ``jit``
      with shardings, where norms are global automatically.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update(grads, state, params)`` requires ``params``.

  Raises:
    TypeError: at construction, for a number that is not a real number (a str, None, a bool, complex), a
      flag that is not a bool, an option name that is not a str, a ``mask``, ``layer_axes``, ``axis_name``
      ``weight_decay_mask`` or ``accumulator_dtype`` not of an allowed form; at ``init``, for parameters
      that are not floating point (their fractional updates would be truncated); at the first ``update``,
      for gradients that are not floating point, naming the leaf.
    ValueError: at construction, for an infinite or NaN hyperparameter, one beyond float32's range (about
      3.4e38), a negative learning rate or weight decay, momentum outside [0, 1), a non-positive trust
      coefficient, a negative eps or excluded_lr_scale, an unknown option name, a non-floating
      ``accumulator_dtype``, or a schedule that raises or is negative where it is checked; at ``init``, for
      a ``mask``, ``weight_decay_mask`` or ``layer_axes`` that does not fit the parameters.

    Each error about an argument has the attribute ``argument``: the argument's name as in this signature
    (e.g. ``"momentum"``), so that a program maps it to its own setting without parsing the message.

  What construction checks: Python and NumPy numbers in full. A JAX array or tracer (e.g. from
  ``optax.inject_hyperparams`` under ``jit``) only for a numeric scalar dtype and shape: its value is not
  read, so that construction never waits for a device. A schedule is evaluated eagerly at steps 0, 1, 10,
  100, ..., 10^7 (int32 counts, as Optax passes them) and must be finite and ≥ 0 there; a schedule that
  returns a tracer outside ``jit`` or needs a mapped axis is left unchecked, and so are the steps in
  between; one that raises anything else is refused, its error chained.

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
  _validation.check_learning_rate("learning_rate", learning_rate)
  checked_momentum, excluded_scale, buffer_dtype = _checked_step_options(
    momentum, nesterov, trust_clip, learning_rate_placement, excluded_lr_scale, accumulator_dtype
  )
  layerwise = _trust_ratio.LayerwiseTrustRatio.create(
    weight_decay=weight_decay,
    trust_coefficient=trust_coefficient,
    eps=eps,
    trust_ratio_norm=trust_ratio_norm,
    mask=mask,
    weight_decay_mask=weight_decay_mask,
    layer_axes=layer_axes,
    axis_name=axis_name,
  )
  step_rule = functools.partial(
    _leaf_step_rule,
    inside=learning_rate_placement == "inside",
    trust_clip=trust_clip,
    excluded_scale=excluded_scale,
    weight_decay=layerwise.weight_decay,
  )
  leaf_step = functools.partial(
    _leaf_step, layerwise=layerwise, step_rule=step_rule, momentum=checked_momentum, nesterov=nesterov
  )

  def init_fn(params: optax.Params) -> LarsState:
    buffers = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=buffer_dtype), params)
    return LarsState(count=jnp.zeros([], jnp.int32), momentum=buffers, diagnostics=layerwise.init(params))

  def update_fn(
    updates: optax.Updates, state: LarsState, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[optax.Updates, LarsState]:
    del extra_args
    layout = layerwise.layout(updates, params)
    lr = _trust_ratio.learning_rate_at(learning_rate, state.count)

    update_leaf = functools.partial(leaf_step, lr=lr)
    step = _trust_ratio.map_leaves(update_leaf, _LeafStep, updates, params, state.momentum, *layout)
    new_state = LarsState(_trust_ratio.next_count(state.count), step.momentum, step.diagnostics)
    return step.update, new_state

  return optax.GradientTransformationExtraArgs(init_fn, _trust_ratio.as_update_fn(update_fn))


def _checked_step_options(
  momentum: ArrayLike,
  nesterov: bool,
  trust_clip: bool,
  learning_rate_placement: str,
  excluded_lr_scale: ArrayLike,
  accumulator_dtype: DTypeLike | None,
) -> tuple[Scalar, Scalar, Any]:
  """The momentum step's arguments of `lars`, checked: m, the excluded leaves' scale, the buffers' dtype."""
  checked_momentum = _validation.check_number("momentum", momentum, _validation.UNIT_INTERVAL)
  _validation.check_bool("nesterov", nesterov)
  _validation.check_bool("trust_clip", trust_clip)
  _validation.check_choice("learning_rate_placement", learning_rate_placement, LEARNING_RATE_PLACEMENTS)
  excluded_scale = _validation.check_number("excluded_lr_scale", excluded_lr_scale, _validation.NON_NEGATIVE)
  return checked_momentum, excluded_scale, _validation.floating_dtype("accumulator_dtype", accumulator_dtype)


def _leaf_step(
  grad: jax.Array,
  param: jax.Array,
  velocity: jax.Array,
  adapted: bool,
  decayed: bool,
  num_layer_axes: int,
  *,
  lr: Scalar,
  layerwise: _trust_ratio.LayerwiseTrustRatio,
  step_rule: Any,
  momentum: Scalar,
  nesterov: bool,
) -> _LeafStep:
  """One leaf's step: its update Δw, its new velocity v and its diagnostics."""
  diagnostics = layerwise.of_leaf(param, grad, adapted, decayed, num_layer_axes)
  rule = step_rule(diagnostics.trust_ratio, grad, lr, adapted, decayed)
  new_velocity = _trust_ratio.add_scaled_direction(  # v <- m v + r d
    momentum * velocity.astype(_trust_ratio.wide_dtype(velocity)), grad, param, rule.rates
  )
  descent = new_velocity
  if nesterov:  # m v + r d
    descent = _trust_ratio.add_scaled_direction(momentum * new_velocity, grad, param, rule.rates)
  new_update = (rule.update_scale * descent).astype(grad.dtype)  # Δw = -v (inside) or -γ v (outside)
  return _LeafStep(new_update, new_velocity.astype(velocity.dtype), diagnostics)


def _leaf_step_rule(
  ratio: jax.Array,
  grad: jax.Array,
  lr: Scalar,
  adapted: bool,
  decayed: bool,
  *,
  inside: bool,
  trust_clip: bool,
  excluded_scale: Scalar,
  weight_decay: Scalar,
) -> _LeafStepRule:
  """The rate of d (d = g + βw where decayed, else g) and the multiplier of Δw for one leaf with ratio λ."""
  rate: Scalar
  scale: Scalar
  if not adapted:  # inside: v <- m v + s γ d, Δw = -v;  outside: v <- m v + d, Δw = -s γ v
    rate, scale = (excluded_scale * lr, -1.0) if inside else (1.0, -excluded_scale * lr)
  elif inside:  # v <- m v + γ λ d (LARC: min(λ, γ) d);  Δw = -v
    ratio = jnp.minimum(ratio, lr) if trust_clip else lr * ratio
    rate, scale = _trust_ratio.expand_to(ratio, grad), -1.0
  else:  # v <- m v + λ d (LARC: min(λ/γ, 1) d);  Δw = -γ v
    ratio = _trust_ratio.clipped_ratio(ratio, lr) if trust_clip else ratio
    rate, scale = _trust_ratio.expand_to(ratio, grad), -lr
  return _LeafStepRule(LeafRates(rate, rate * weight_decay if decayed else None), scale)


class _LeafStepRule(NamedTuple):
  """How one leaf's step is formed: v <- m v + rates·d;  Δw = update_scale · v (or the Nesterov form)."""

  rates: LeafRates
  update_scale: Scalar  # -1 (inside), -γ_t or -s γ_t (outside).


class _LeafStep(NamedTuple):
  """One leaf's result in :func:`lars`."""

  update: jax.Array
  momentum: jax.Array
  diagnostics: TrustRatioDiagnostics
