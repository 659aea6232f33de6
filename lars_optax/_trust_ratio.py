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

from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar, cast, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from lars_optax import _masks, _validation
from lars_optax._validation import Scalar

TrustRatioNorm = Literal["paper", "update"]
"""The denominator of λ: ``"paper"`` ‖g‖ + β‖w‖ + ε, ``"update"`` ‖g + βw‖ + ε."""
TRUST_RATIO_NORMS: tuple[str, ...] = get_args(TrustRatioNorm)

AxisName = str | tuple[str, ...]
"""A ``pmap``/``shard_map`` axis name, or a tuple of them, over which squared norms are summed."""

_Result = TypeVar("_Result", bound=tuple)


class TrustRatioDiagnostics(NamedTuple):
  """Per-layer quantities of the last update, for logging and plots.

  Each field is a pytree with the structure of the parameters whose leaves are float32 arrays of shape
  ``leaf.shape[:layer_axes]`` (scalars for ordinary layers). All three hold zeros before the first update.
  Inside the library the same tuple also carries one leaf's three arrays.
  """

  trust_ratio: Any  # λ as computed by the formula (before LARC's clipping); 1 for excluded leaves.
  param_norm: Any  # ‖w‖ of the parameters *before* the update.
  grad_norm: Any  # ‖g‖ (paper norm, and excluded leaves) or ‖g + β w‖ (update norm).


class ScaleByTrustRatioState(NamedTuple):
  """State of :func:`scale_by_trust_ratio`: a step counter (for LARC's γ_t) and diagnostics."""

  count: jax.Array  # type: ignore[assignment]  # int32 scalar: number of updates so far (Optax's name).
  diagnostics: TrustRatioDiagnostics


class LeafLayout(NamedTuple):
  """Per-leaf settings resolved against the parameters: pytrees with the structure of the parameters."""

  adapted: Any  # Python bools: True where weight decay and the trust ratio apply.
  num_layer_axes: Any  # Python ints: leading axes of the leaf that index stacked layers.


class LeafRates(NamedTuple):
  """The rates of one leaf's step base + r d = base + r g + (r β) w, in float32, broadcastable to the leaf."""

  grad_rate: jax.Array | float  # r, the rate of g.
  decay_rate: jax.Array | None  # r β, the rate of w; None for an excluded leaf (no weight decay, w unread).


def per_layer_l2_norm(x: jax.Array, num_layer_axes: int, axis_name: AxisName | None) -> jax.Array:
  """‖x‖₂ in float32 of each slice behind the ``num_layer_axes`` leading axes, summed over ``axis_name``.

  A per-layer Euclidean norm (not layer normalisation): shape ``x.shape[:num_layer_axes]``.
  """
  squares = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=tuple(range(num_layer_axes, x.ndim)))
  if axis_name is not None:
    squares = jax.lax.psum(squares, axis_name)
  return jnp.sqrt(squares)


class LayerwiseTrustRatio(NamedTuple):
  """What :func:`lars_optax.lars` and :func:`scale_by_trust_ratio` share, checked once at construction.

  The hyperparameters of λ, which leaves are adapted (``mask``) and how many leading axes index layers
  (``layer_axes``); :meth:`init` and :meth:`layout` are the two transformations' ``init`` and ``update``
  preambles, and :meth:`of_leaf` is λ of one leaf.
  """

  weight_decay: Scalar
  trust_coefficient: Scalar
  eps: Scalar
  trust_ratio_norm: TrustRatioNorm
  mask: _masks.Mask
  layer_axes: _masks.LayerAxes
  axis_name: AxisName | None

  @classmethod
  def create(
    cls,
    *,
    weight_decay: ArrayLike,
    trust_coefficient: ArrayLike,
    eps: ArrayLike,
    trust_ratio_norm: TrustRatioNorm,
    mask: _masks.Mask,
    layer_axes: _masks.LayerAxes,
    axis_name: AxisName | None,
  ) -> "LayerwiseTrustRatio":
    """Checks every argument (concrete numbers in full, arrays by dtype and shape) and bundles them."""
    checked_weight_decay = _validation.check_number("weight_decay", weight_decay, _validation.NON_NEGATIVE)
    checked_trust_coefficient = _validation.check_number(
      "trust_coefficient", trust_coefficient, _validation.POSITIVE
    )
    checked_eps = _validation.check_number("eps", eps, _validation.NON_NEGATIVE)
    _validation.check_choice("trust_ratio_norm", trust_ratio_norm, TRUST_RATIO_NORMS)
    _masks.check_mask(mask)
    _masks.check_layer_axes(layer_axes)
    _validation.check_axis_name("axis_name", axis_name)
    return cls(
      checked_weight_decay,
      checked_trust_coefficient,
      checked_eps,
      trust_ratio_norm,
      mask,
      layer_axes,
      axis_name,
    )

  def init(self, params: optax.Params) -> TrustRatioDiagnostics:
    """The ``init`` preamble: checks the parameters' dtypes, mask and layer axes; returns zero diagnostics."""
    check_floating_params(params)
    layout = self.layout(params)

    def zeros() -> optax.Updates:  # A new tree per field: one shared buffer could not be donated.
      return jax.tree.map(
        lambda leaf, axes: jnp.zeros(jnp.shape(leaf)[:axes], jnp.float32), params, layout.num_layer_axes
      )

    return TrustRatioDiagnostics(trust_ratio=zeros(), param_norm=zeros(), grad_norm=zeros())

  def layout(self, params: optax.Params | None) -> LeafLayout:
    """The ``update`` preamble: the mask and layer axes resolved against ``params`` (required)."""
    if params is None:
      raise ValueError(_validation.NO_PARAMS_MSG)
    adapted = _masks.resolve_mask(self.mask, params, self.layer_axes)
    return LeafLayout(adapted, _masks.resolve_layer_axes(self.layer_axes, params))

  def of_leaf(
    self, param: jax.Array, grad: jax.Array, adapted: bool, num_layer_axes: int
  ) -> TrustRatioDiagnostics:
    """λ, ‖w‖ and the denominator's gradient norm of one leaf, float32 of shape ``shape[:num_layer_axes]``.

    ``"paper"``: λ = η‖w‖/(‖g‖ + β‖w‖ + ε); ``"update"``: λ = η‖w‖/(‖g + βw‖ + ε). λ = 1 where ‖w‖ = 0 or
    that gradient norm is 0; no NaN or Inf is formed on the way. An excluded leaf has λ = 1 and reports ‖w‖
    and ‖g‖.
    """
    param_norm = per_layer_l2_norm(param, num_layer_axes, self.axis_name)
    if not adapted:
      ones = jnp.ones(jnp.shape(grad)[:num_layer_axes], jnp.float32)
      return TrustRatioDiagnostics(ones, param_norm, per_layer_l2_norm(grad, num_layer_axes, self.axis_name))
    if self.trust_ratio_norm == "paper":
      grad_norm = per_layer_l2_norm(grad, num_layer_axes, self.axis_name)
      denominator = grad_norm + self.weight_decay * param_norm + self.eps
    else:
      decayed = grad.astype(jnp.float32) + self.weight_decay * param.astype(jnp.float32)
      grad_norm = per_layer_l2_norm(decayed, num_layer_axes, self.axis_name)
      denominator = grad_norm + self.eps
    zero_norm = jnp.logical_or(param_norm == 0.0, grad_norm == 0.0)
    ratio = self.trust_coefficient * param_norm / jnp.where(zero_norm, 1.0, denominator)
    return TrustRatioDiagnostics(jnp.where(zero_norm, 1.0, ratio).astype(jnp.float32), param_norm, grad_norm)


def check_floating_params(params: optax.Params) -> None:
  """Raises TypeError when a parameter leaf is not floating point (its fractional update would truncate)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    dtype = np.dtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
        f"params at {_masks.path_to_str(path)!r} must be floating point, got {dtype.name}: LARS updates are "
        "fractional and would be truncated."
      )


def next_count(count: jax.Array) -> jax.Array:
  """The step counter after one update (Optax's ``safe_increment``: it saturates instead of wrapping)."""
  return cast(jax.Array, optax.safe_increment(count))


def as_update_fn(update_fn: Callable[..., Any]) -> optax.TransformUpdateExtraArgsFn:
  """``update_fn`` typed as Optax's protocol (which declares any state; ours takes its own NamedTuple)."""
  return cast(optax.TransformUpdateExtraArgsFn, update_fn)


def learning_rate_at(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> Scalar:
  """γ_t: the schedule evaluated at ``count``, or the constant learning rate."""
  return cast(Scalar, learning_rate(count) if callable(learning_rate) else learning_rate)


def add_scaled_direction(
  base: jax.Array | None, grad: jax.Array, param: jax.Array, rates: LeafRates
) -> jax.Array:
  """base + r g + (r β) w in float32 (no w term for an excluded leaf; base 0 when None).

  Written as two products rather than r (g + β w): a g + β w shared by several consumers (the norm's
  reduction, the momentum and the Nesterov step) would be stored by XLA as a full-size temporary.
  """
  total = rates.grad_rate * grad.astype(jnp.float32)
  if base is not None:
    total = base + total
  return total if rates.decay_rate is None else total + rates.decay_rate * param.astype(jnp.float32)


def expand_to(per_layer: jax.Array, leaf: jax.Array) -> jax.Array:
  """Reshapes per-layer values of shape ``leaf.shape[:num_layer_axes]`` to broadcast against ``leaf``."""
  return per_layer.reshape(per_layer.shape + (1,) * (leaf.ndim - per_layer.ndim))


def clipped_ratio(ratio: jax.Array, learning_rate: Scalar) -> jax.Array:
  """LARC's factor min(λ/γ, 1), so that γ · min(λ/γ, 1) = min(λ, γ); 1 where γ = 0."""
  safe_lr = jnp.where(learning_rate > 0, learning_rate, 1.0)
  return jnp.where(learning_rate > 0, jnp.minimum(ratio / safe_lr, 1.0), 1.0)


def map_leaves(
  leaf_fn: Callable[..., _Result], result_type: type[_Result], updates: optax.Updates, *trees: Any
) -> _Result:
  """Maps ``leaf_fn`` over ``updates`` and ``trees``; turns the per-leaf ``result_type`` tuples into one
  ``result_type`` whose fields are trees with the structure of ``updates`` (nested tuples likewise)."""
  results = jax.tree.map(leaf_fn, updates, *trees)
  outer: Any = jax.tree.structure(updates)  # a PyTreeDef (untyped for mypy)
  if outer.num_leaves == 0:
    return _fill(result_type, updates)
  inner = jax.tree.structure(jax.tree.leaves(results, is_leaf=lambda node: isinstance(node, result_type))[0])
  return jax.tree.transpose(outer, inner, results)


def _fill(result_type: type[_Result], value: Any) -> _Result:
  """A ``result_type`` with ``value`` in every field, recursing into fields annotated as NamedTuples."""
  fields = []
  for annotation in result_type.__annotations__.values():
    fields.append(_fill(annotation, value) if hasattr(annotation, "_fields") else value)
  return result_type(*fields)


def scale_by_trust_ratio(
  *,
  weight_decay: ArrayLike = 0.0,
  trust_coefficient: ArrayLike = 0.001,
  eps: ArrayLike = 0.0,
  mask: _masks.Mask = None,
  trust_ratio_norm: TrustRatioNorm = "paper",
  trust_clip: bool = False,
  learning_rate: optax.ScalarOrSchedule | None = None,
  layer_axes: _masks.LayerAxes = None,
  axis_name: AxisName | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales each adapted layer's decayed gradient by its trust ratio; passes excluded leaves through.

  For an adapted leaf (``mask`` True), with λ = η‖w‖/(‖g‖ + β‖w‖ + ε) (``"paper"``) or η‖w‖/(‖g + βw‖ + ε)
  (``"update"``), and λ = 1 where ‖w‖ or that gradient norm is 0:

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

  Raises:
    TypeError: at construction, for a hyperparameter that is not a real number (a str, None, a bool...), a
      flag that is not a bool, or a malformed ``mask``/``layer_axes``; at ``init``, for parameters that are
      not floating point.
    ValueError: at construction, for an infinite, NaN or out-of-range hyperparameter, an unknown option
      name, a learning-rate schedule that is negative where it is checked (see :func:`lars_optax.lars`), or
      ``trust_clip=True`` without ``learning_rate``.

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
  layerwise = LayerwiseTrustRatio.create(
    weight_decay=weight_decay,
    trust_coefficient=trust_coefficient,
    eps=eps,
    trust_ratio_norm=trust_ratio_norm,
    mask=mask,
    layer_axes=layer_axes,
    axis_name=axis_name,
  )
  _validation.check_bool("trust_clip", trust_clip)
  if trust_clip and learning_rate is None:
    raise ValueError("learning_rate is required when trust_clip=True (LARC clips λ against γ_t).")
  if learning_rate is not None:
    _validation.check_learning_rate("learning_rate", learning_rate)

  def init_fn(params: optax.Params) -> ScaleByTrustRatioState:
    return ScaleByTrustRatioState(count=jnp.zeros([], jnp.int32), diagnostics=layerwise.init(params))

  def update_fn(
    updates: optax.Updates,
    state: ScaleByTrustRatioState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, ScaleByTrustRatioState]:
    del extra_args
    layout = layerwise.layout(params)
    lr = learning_rate_at(learning_rate, state.count) if learning_rate is not None else None

    def scale_leaf(grad: jax.Array, param: jax.Array, adapted: bool, num_layer_axes: int) -> _LeafScaling:
      diagnostics = layerwise.of_leaf(param, grad, adapted, num_layer_axes)
      if not adapted:
        return _LeafScaling(grad, diagnostics)  # u = g
      ratio = diagnostics.trust_ratio
      factor = expand_to(clipped_ratio(ratio, lr) if lr is not None and trust_clip else ratio, grad)
      rates = LeafRates(factor, factor * layerwise.weight_decay)
      scaled = add_scaled_direction(None, grad, param, rates)  # u = λ g + (λ β) w
      return _LeafScaling(scaled.astype(grad.dtype), diagnostics)

    result = map_leaves(scale_leaf, _LeafScaling, updates, params, layout.adapted, layout.num_layer_axes)
    return result.update, ScaleByTrustRatioState(next_count(state.count), result.diagnostics)

  return optax.GradientTransformationExtraArgs(init_fn, as_update_fn(update_fn))


class _LeafScaling(NamedTuple):
  """One leaf's result in :func:`scale_by_trust_ratio`."""

  update: jax.Array
  diagnostics: TrustRatioDiagnostics
