"""The per-layer trust ratio of LARS, and the composable transformation that rescales updates by it.

For one layer with weights w, gradient g (of the loss without weight decay), weight decay β, trust
coefficient η and ε (paper, Algorithm 1 and equation (6)):

    paper  norm:  λ = η ‖w‖ / (‖g‖ + β ‖w‖ + ε)
    update norm:  λ = η ‖w‖ / (‖g + β w‖ + ε)          (optax.lars, TF Model Garden, SimCLR, BYOL)

and λ = 1 where ‖w‖ = 0 or the norm in the denominator (‖g‖, resp. ‖g + β w‖) is 0 (MLPerf, timm and Flax
convention): a zero-initialised kernel then takes a raw step of the global learning rate. Norms are
accumulated in float32 whatever the parameter dtype, per slice of the leading ``layer_axes`` of a leaf, and
summed over ``axis_name`` when a leaf is split across devices (FSDP/ZeRO inside ``pmap``/``shard_map``).

References:
  You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017.
  https://arxiv.org/abs/1708.03888
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lars_optax import _masks, _validation

TRUST_RATIO_NORMS = ("paper", "update")


class TrustRatioDiagnostics(NamedTuple):
  """Per-layer quantities of the last update, for logging and plots.

  Each field is a pytree with the structure of the parameters whose leaves are float32 arrays of shape
  ``leaf.shape[:layer_axes]`` (scalars for ordinary layers). All three hold zeros before the first update.
  """

  trust_ratio: Any  # λ as computed by the formula (before LARC's clipping); 1 for excluded leaves.
  param_norm: Any  # ‖w‖ of the parameters *before* the update.
  grad_norm: Any  # ‖g‖ (paper norm, and excluded leaves) or ‖g + β w‖ (update norm).


class ScaleByTrustRatioState(NamedTuple):
  """State of :func:`scale_by_trust_ratio`: a step counter (for LARC's γ_t) and diagnostics."""

  count: jax.Array  # int32 scalar: number of updates so far.
  diagnostics: TrustRatioDiagnostics


def check_trust_ratio_args(
  *, weight_decay: Any, trust_coefficient: Any, eps: Any, trust_ratio_norm: str, trust_clip: bool
) -> None:
  """Raises ValueError/TypeError for bad trust-ratio hyperparameters (concrete values only)."""
  _validation.check_at_least("weight_decay", weight_decay, 0.0)
  _validation.check_positive("trust_coefficient", trust_coefficient)
  _validation.check_at_least("eps", eps, 0.0)
  _validation.check_choice("trust_ratio_norm", trust_ratio_norm, TRUST_RATIO_NORMS)
  _validation.check_bool("trust_clip", trust_clip)


def layer_norm(x: jax.Array, layer_axes: int, axis_name: str | None) -> jax.Array:
  """‖x‖ in float32 per slice of the ``layer_axes`` leading axes, summed over ``axis_name`` if given."""
  squares = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=tuple(range(layer_axes, x.ndim)))
  if axis_name is not None:
    squares = jax.lax.psum(squares, axis_name)
  return jnp.sqrt(squares)


def trust_ratio(
  param: jax.Array,
  grad: jax.Array,
  *,
  weight_decay: Any,
  trust_coefficient: Any,
  eps: Any,
  trust_ratio_norm: str,
  layer_axes: int = 0,
  axis_name: str | None = None,
  adapted: bool = True,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """λ, ‖w‖ and the denominator's gradient norm of one leaf, all float32 of shape ``shape[:layer_axes]``.

  ``trust_ratio_norm="paper"``: λ = η‖w‖/(‖g‖ + β‖w‖ + ε); ``"update"``: λ = η‖w‖/(‖g + βw‖ + ε).
  λ = 1 where ‖w‖ = 0 or that gradient norm is 0; no NaN or Inf is formed on the way. An excluded leaf
  (``adapted=False``) has λ = 1 and reports ‖w‖ and ‖g‖ for the diagnostics.
  """
  if not adapted:
    ones = jnp.ones(jnp.shape(grad)[:layer_axes], jnp.float32)
    return ones, layer_norm(param, layer_axes, axis_name), layer_norm(grad, layer_axes, axis_name)
  param_norm = layer_norm(param, layer_axes, axis_name)
  if trust_ratio_norm == "paper":
    grad_norm = layer_norm(grad, layer_axes, axis_name)
    denominator = grad_norm + weight_decay * param_norm + eps
  else:
    decayed = grad.astype(jnp.float32) + weight_decay * param.astype(jnp.float32)
    grad_norm = layer_norm(decayed, layer_axes, axis_name)
    denominator = grad_norm + eps
  zero_norm = jnp.logical_or(param_norm == 0.0, grad_norm == 0.0)
  ratio = trust_coefficient * param_norm / jnp.where(zero_norm, 1.0, denominator)
  return jnp.where(zero_norm, 1.0, ratio).astype(jnp.float32), param_norm, grad_norm


def expand_to(per_layer: jax.Array, leaf: jax.Array) -> jax.Array:
  """Reshapes per-layer values of shape ``leaf.shape[:k]`` to broadcast against ``leaf``."""
  return per_layer.reshape(per_layer.shape + (1,) * (leaf.ndim - per_layer.ndim))


def clipped_ratio(ratio: jax.Array, learning_rate: jax.Array) -> jax.Array:
  """LARC's factor min(λ/γ, 1), so that γ · min(λ/γ, 1) = min(λ, γ); 1 where γ = 0."""
  safe_lr = jnp.where(learning_rate > 0, learning_rate, 1.0)
  return jnp.where(learning_rate > 0, jnp.minimum(ratio / safe_lr, 1.0), 1.0)


def init_diagnostics(params: Any, layer_axes: Any) -> TrustRatioDiagnostics:
  """Zero diagnostics with one float32 entry per layer of each leaf."""
  zeros = jax.tree.map(lambda leaf, k: jnp.zeros(jnp.shape(leaf)[:k], jnp.float32), params, layer_axes)
  return TrustRatioDiagnostics(trust_ratio=zeros, param_norm=zeros, grad_norm=zeros)


def scale_by_trust_ratio(
  *,
  weight_decay: Any = 0.0,
  trust_coefficient: Any = 0.001,
  eps: Any = 0.0,
  mask: _masks.Mask = None,
  trust_ratio_norm: str = "paper",
  trust_clip: bool = False,
  learning_rate: optax.ScalarOrSchedule | None = None,
  layer_axes: _masks.LayerAxes = None,
  axis_name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales each adapted layer's decayed gradient by its trust ratio; passes excluded leaves through.

  For an adapted leaf (``mask`` True), with λ as in :func:`trust_ratio`:

      u = λ · (g + β w)                          (LARS)
      u = min(λ / γ_t, 1) · (g + β w)            (``trust_clip=True``: LARC; needs ``learning_rate``)

  and u = g for an excluded leaf (no weight decay, no trust ratio). The transformation keeps no buffers:
  its state is a step counter (for γ_t) and the diagnostics of the last update.

  Weight decay is taken here, not from a preceding ``optax.add_decayed_weights``: chaining that first would
  feed g + βw into the denominator and silently give the ``"update"`` norm instead of the paper's.

  Which chain is which optimizer (tested in ``tests/test_lars_chains.py``):

  - ``optax.chain(scale_by_trust_ratio(weight_decay=β), optax.sgd(γ, momentum=m, nesterov=n))`` equals
    ``lars(γ, weight_decay=β, momentum=m, nesterov=n, learning_rate_placement="outside")`` (timm, apex).
  - ``optax.chain(scale_by_trust_ratio(weight_decay=β), optax.scale_by_learning_rate(γ),
    optax.trace(decay=m, nesterov=n))`` equals ``lars(γ, weight_decay=β, momentum=m, nesterov=n)``: the
    paper's Algorithm 1 (LR inside the momentum buffer).
  - With ``trust_clip=True, learning_rate=γ`` followed by ``optax.sgd(γ, momentum=m)``: apex LARC
    (``clip=True``) and timm ``Lars(trust_clip=True)``.

  Args:
    weight_decay: β, added to adapted leaves as g + βw before scaling.
    trust_coefficient: η (the paper uses 0.001; apex LARC 0.02).
    eps: ε in the denominator.
    mask: which leaves are adapted: ``None`` (rank > 1, see :func:`lars_optax.rank_mask`), a pytree of
      bools, or a callable of the parameters.
    trust_ratio_norm: ``"paper"`` (‖g‖ + β‖w‖) or ``"update"`` (‖g + βw‖).
    trust_clip: LARC clipping; requires ``learning_rate``.
    learning_rate: γ_t (float or schedule), used only by ``trust_clip``.
    layer_axes: leading axes of a leaf that index stacked layers (int, pytree of ints, or callable).
    axis_name: a mapped axis over which leaves are split; squared norms are summed over it.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, lars_optax
    >>> params = {"w": jnp.ones((3, 3)), "b": jnp.zeros(3)}
    >>> opt = optax.chain(lars_optax.scale_by_trust_ratio(weight_decay=1e-4), optax.sgd(0.1, 0.9))
    >>> state = opt.init(params)
    >>> grads = {"w": jnp.full((3, 3), 0.5), "b": jnp.ones(3)}
    >>> updates, state = opt.update(grads, state, params)
    >>> bool(updates["w"][0, 0] < 0)
    True

  References:
    You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
    https://arxiv.org/abs/1708.03888 (LARS). Apex ``LARC`` (NVIDIA) for the clipped variant.
  """
  check_trust_ratio_args(
    weight_decay=weight_decay,
    trust_coefficient=trust_coefficient,
    eps=eps,
    trust_ratio_norm=trust_ratio_norm,
    trust_clip=trust_clip,
  )
  if trust_clip and learning_rate is None:
    raise ValueError("learning_rate is required when trust_clip=True (LARC clips λ against γ_t).")
  if learning_rate is not None and not callable(learning_rate):
    _validation.check_at_least("learning_rate", learning_rate, 0.0)

  def init_fn(params: Any) -> ScaleByTrustRatioState:
    _masks.resolve_mask(mask, params, layer_axes)
    axes = _masks.resolve_layer_axes(layer_axes, params)
    return ScaleByTrustRatioState(count=jnp.zeros([], jnp.int32), diagnostics=init_diagnostics(params, axes))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(_validation.NO_PARAMS_MSG)
    flags = _masks.resolve_mask(mask, params, layer_axes)
    axes = _masks.resolve_layer_axes(layer_axes, params)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def scale_leaf(grad, param, adapted, k):
      ratio, param_norm, grad_norm = trust_ratio(
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
        return grad, ratio, param_norm, grad_norm
      factor = clipped_ratio(ratio, lr) if trust_clip else ratio
      factor = expand_to(factor, grad)
      # λ g + (λ β) w rather than λ (g + β w): with the "update" norm, g + β w would be shared with the
      # norm's reduction and stored as a full-size temporary.
      scaled = factor * grad.astype(jnp.float32) + (factor * weight_decay) * param.astype(jnp.float32)
      return scaled.astype(grad.dtype), ratio, param_norm, grad_norm

    results = jax.tree.map(scale_leaf, updates, params, flags, axes)
    new_updates, *diagnostics = unzip_leaf_results(results, updates, 4)
    return new_updates, ScaleByTrustRatioState(
      count=optax.safe_increment(state.count), diagnostics=TrustRatioDiagnostics(*diagnostics)
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def unzip_leaf_results(results: Any, like: Any, width: int) -> list[Any]:
  """Splits a tree of per-leaf ``width``-tuples into ``width`` trees with the structure of ``like``."""
  treedef = jax.tree.structure(like)
  leaves = treedef.flatten_up_to(results)
  if not leaves:
    return [like] * width
  return [jax.tree.unflatten(treedef, column) for column in zip(*leaves, strict=True)]
