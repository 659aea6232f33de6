"""The per-layer trust ratio of LARS, and the composable transformation that rescales updates by it.

For one layer with weights w, gradient g (of the loss without weight decay), weight decay β, trust
coefficient η and ε (paper, Algorithm 1 and equation (6)):

    paper  norm:  λ = η ‖w‖ / (‖g‖ + β ‖w‖ + ε)
    update norm:  λ = η ‖w‖ / (‖g + β w‖ + ε)          (optax.lars, TF Model Garden, SimCLR, BYOL)

and λ = 1 where ‖w‖ = 0 or the norm in the denominator (‖g‖, resp. ‖g + β w‖) is 0 (MLPerf, timm and Flax
convention): a zero-initialised kernel then takes a raw step of the global learning rate. Norms are
accumulated in float32 (float64 for float64 parameters) whatever the parameter dtype, per slice of the
leading ``layer_axes`` of a leaf, and summed over ``axis_name`` when a leaf is split across devices
(FSDP/ZeRO inside ``pmap``/``shard_map``).

References:
  You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017.
  https://arxiv.org/abs/1708.03888
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar, cast, get_args

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from lars_optax import _masks, _validation
from lars_optax._validation import Scalar

TrustRatioNorm = Literal["paper", "update"]
"""The denominator of λ: ``"paper"`` ‖g‖ + β‖w‖ + ε, ``"update"`` ‖g + βw‖ + ε."""
TRUST_RATIO_NORMS: tuple[str, ...] = get_args(TrustRatioNorm)

AxisName = str | tuple[str, ...]
"""A ``pmap``/``shard_map`` axis name, or a tuple of them, over which squared norms are summed."""
MaybeAxisName = AxisName | None
"""An :data:`AxisName`, or None (no mapped axis)."""
MaybeSchedule = optax.ScalarOrSchedule | None
"""A learning rate (float or schedule), or None."""

_Result = TypeVar("_Result", bound=tuple)


class TrustRatioDiagnostics(NamedTuple):
  """Per-layer quantities of the last update, for logging and plots.

  Each field is a pytree with the structure of the parameters whose leaves are float32 arrays (float64 for
  float64 parameters) of shape
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

  adapted: Any  # Python bools: True where the trust ratio applies (``mask``).
  decayed: Any  # Python bools: True where weight decay applies (``weight_decay_mask``).
  num_layer_axes: Any  # Python ints: leading axes of the leaf that index stacked layers.


class LeafRates(NamedTuple):
  """The rates of one leaf's step base + r d = base + r g + (r β) w, broadcastable to the leaf."""

  grad_rate: jax.Array | float  # r, the rate of g.
  decay_rate: jax.Array | float | None  # r β, the rate of w; None for a leaf without weight decay (w unread).


def wide_dtype(x: Any) -> Any:
  """The dtype LARS computes a leaf in: float32, or float64 for float64 leaves (never narrower)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def per_layer_l2_norm(x: jax.Array, num_layer_axes: int, axis_name: AxisName | None) -> jax.Array:
  """‖x‖₂ of each slice behind ``num_layer_axes`` leading axes, summed over ``axis_name``.

  Computed in :func:`wide_dtype`. A per-layer Euclidean norm (not layer normalisation): shape
  ``x.shape[:num_layer_axes]``.
  """
  squares = jnp.sum(jnp.square(x.astype(wide_dtype(x))), axis=tuple(range(num_layer_axes, x.ndim)))
  if axis_name is not None:
    squares = jax.lax.psum(squares, axis_name)
  return jnp.sqrt(squares)


class LayerwiseTrustRatio(NamedTuple):
  """What :func:`lars_optax.lars` and :func:`scale_by_trust_ratio` share, checked once at construction.

  The hyperparameters of λ, which leaves are adapted (``mask``) and decayed (``weight_decay_mask``) and how
  many leading axes index layers (``layer_axes``); :meth:`init` and :meth:`layout` are the two
  transformations' ``init`` and ``update`` preambles, and :meth:`of_leaf` is λ of one leaf.
  """

  weight_decay: Scalar
  trust_coefficient: Scalar
  eps: Scalar
  trust_ratio_norm: TrustRatioNorm
  mask: _masks.Mask
  weight_decay_mask: _masks.Mask
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
    weight_decay_mask: _masks.Mask,
    layer_axes: _masks.LayerAxes,
    axis_name: AxisName | None,
  ) -> LayerwiseTrustRatio:
    """Checks every argument (concrete numbers in full, arrays by dtype and shape) and bundles them."""
    checked_weight_decay = _validation.check_number("weight_decay", weight_decay, _validation.NON_NEGATIVE)
    checked_trust_coefficient = _validation.check_number(
      "trust_coefficient", trust_coefficient, _validation.POSITIVE
    )
    checked_eps = _validation.check_number("eps", eps, _validation.NON_NEGATIVE)
    _validation.check_choice("trust_ratio_norm", trust_ratio_norm, TRUST_RATIO_NORMS)
    _masks.check_mask(mask)
    _masks.check_mask(weight_decay_mask, "weight_decay_mask")
    _masks.check_layer_axes(layer_axes)
    _validation.check_axis_name("axis_name", axis_name)
    return cls(
      checked_weight_decay,
      checked_trust_coefficient,
      checked_eps,
      trust_ratio_norm,
      mask,
      weight_decay_mask,
      layer_axes,
      axis_name,
    )

  def init(self, params: optax.Params) -> TrustRatioDiagnostics:
    """The ``init`` preamble: checks the parameters' dtypes, mask and layer axes; returns zero diagnostics."""
    _validation.check_floating_leaves("params", params, _NOT_FLOATING)
    num_layer_axes = self.layout(params, params).num_layer_axes

    def zeros() -> optax.Updates:  # A new tree per field: one shared buffer could not be donated.
      return jax.tree.map(
        lambda leaf, axes: jnp.zeros(jnp.shape(leaf)[:axes], wide_dtype(leaf)), params, num_layer_axes
      )

    return TrustRatioDiagnostics(trust_ratio=zeros(), param_norm=zeros(), grad_norm=zeros())

  def layout(self, updates: optax.Updates, params: optax.Params | None) -> LeafLayout:
    """The ``update`` preamble: floating ``updates``; the masks and layer axes resolved against ``params``."""
    if params is None:
      raise _validation.ArgumentValueError("params", _validation.NO_PARAMS_MSG)
    _validation.check_floating_leaves("updates", updates, _NOT_FLOATING)
    adapted = _masks.resolve_mask(self.mask, params, self.layer_axes)
    decayed = _masks.resolve_weight_decay_mask(self.weight_decay_mask, self.mask, params, self.layer_axes)
    return LeafLayout(adapted, decayed, _masks.resolve_layer_axes(self.layer_axes, params))

  def decay_of(self, decayed: bool) -> Scalar:
    """β of one leaf: the weight decay where ``weight_decay_mask`` is True, else 0."""
    return self.weight_decay if decayed else 0.0

  def of_leaf(
    self, param: jax.Array, grad: jax.Array, adapted: bool, decayed: bool, num_layer_axes: int
  ) -> TrustRatioDiagnostics:
    """λ, ‖w‖ and the denominator's gradient norm of one leaf, of shape ``shape[:num_layer_axes]``.

    ``"paper"``: λ = η‖w‖/(‖g‖ + β‖w‖ + ε); ``"update"``: λ = η‖w‖/(‖g + βw‖ + ε), with β = 0 for a leaf
    that is not decayed. λ = 1 where ‖w‖ = 0 or that gradient norm is 0; no NaN or Inf is formed on the
    way. An excluded leaf has λ = 1 and reports ‖w‖ and ‖g‖.
    """
    wide = wide_dtype(param)
    param_norm = per_layer_l2_norm(param, num_layer_axes, self.axis_name)
    if not adapted:
      ones = jnp.ones(jnp.shape(grad)[:num_layer_axes], wide)
      grad_norm = per_layer_l2_norm(grad, num_layer_axes, self.axis_name).astype(wide)
      return TrustRatioDiagnostics(ones, param_norm, grad_norm)
    decay = self.decay_of(decayed)
    if self.trust_ratio_norm == "paper" or not decayed:
      grad_norm = per_layer_l2_norm(grad, num_layer_axes, self.axis_name)
      denominator = grad_norm + decay * param_norm + self.eps
    else:
      direction = grad.astype(wide_dtype(grad)) + decay * param.astype(wide)
      grad_norm = per_layer_l2_norm(direction, num_layer_axes, self.axis_name)
      denominator = grad_norm + self.eps
    zero_norm = jnp.logical_or(param_norm == 0.0, grad_norm == 0.0)
    ratio = self.trust_coefficient * param_norm / jnp.where(zero_norm, 1.0, denominator)
    ratio = jnp.where(zero_norm, 1.0, ratio)
    return TrustRatioDiagnostics(ratio.astype(wide), param_norm, grad_norm.astype(wide))


_NOT_FLOATING = "LARS updates are fractional and would be truncated."


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
  """base + r g + (r β) w in float32 or wider (no w term without weight decay; base 0 when None).

  Written as two products rather than r (g + β w): a g + β w shared by several consumers (the norm's
  reduction, the momentum and the Nesterov step) would be stored by XLA as a full-size temporary.
  """
  total = rates.grad_rate * grad.astype(wide_dtype(grad))
  if base is not None:
    total = base + total
  return total if rates.decay_rate is None else total + rates.decay_rate * param.astype(wide_dtype(param))


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
  for annotation in typing.get_type_hints(result_type).values():
    fields.append(_fill(annotation, value) if hasattr(annotation, "_fields") else value)
  return result_type(*fields)


def scale_by_trust_ratio(
  *,
  weight_decay: ArrayLike = 0.0,
  trust_coefficient: ArrayLike = 0.001,
  eps: ArrayLike = 0.0,
  mask: _masks.Mask = None,
  weight_decay_mask: _masks.Mask = None,
  trust_ratio_norm: TrustRatioNorm = "paper",
  trust_clip: bool = False,
  learning_rate: MaybeSchedule = None,
  layer_axes: _masks.LayerAxes = None,
  axis_name: MaybeAxisName = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales each adapted layer's decayed gradient by its trust ratio; passes excluded leaves through.

  For each leaf, with weights w, gradient g, trust coefficient η and β the weight decay where
  ``weight_decay_mask`` is True (β = 0 elsewhere), d = g + β w and

  .. math::

    \lambda = \frac{\eta \lVert w \rVert}{\lVert g \rVert + \beta \lVert w \rVert + \epsilon}
    \quad\text{(paper)} \qquad
    \lambda = \frac{\eta \lVert w \rVert}{\lVert g + \beta w \rVert + \epsilon}
    \quad\text{(update norm)},

  with λ = 1 where ‖w‖ or that gradient norm is 0, the output is

  .. math::

    u = \begin{cases}
      \lambda\, d & \text{adapted leaf (} \texttt{mask} \text{ True): LARS} \\
      \min(\lambda / \gamma_t, 1)\, d & \text{adapted leaf with } \texttt{trust\_clip}
        \text{: LARC} \\
      d & \text{excluded leaf (no trust ratio; } \beta \text{ only if decayed)}
    \end{cases}

  The four cases per leaf: adapted and decayed (d = g + βw, β in λ); adapted, not decayed (β = 0 in λ and
  d); excluded and decayed (u = g + βw); excluded, not decayed (u = g). The transformation keeps no
  buffers: its state is a step counter (for γ_t) and the diagnostics of the last update.

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
    weight_decay: β ≥ 0, added to decayed leaves as g + βw before scaling.
    trust_coefficient: η > 0 (the paper uses 0.001; apex LARC 0.02).
    eps: ε ≥ 0 in the denominator.
    mask: which leaves are adapted: ``None`` (rank > 1, see :func:`lars_optax.rank_mask`), a pytree of
      bools, or a callable of the parameters.
    weight_decay_mask: which leaves get weight decay, in the same forms as ``mask``; ``None`` (default):
      the leaves of ``mask``.
    trust_ratio_norm: ``"paper"`` (‖g‖ + β‖w‖) or ``"update"`` (‖g + βw‖).
    trust_clip: LARC clipping; requires ``learning_rate``.
    learning_rate: γ_t (float or schedule) of LARC's clip; only with ``trust_clip=True``.
    layer_axes: leading axes of a leaf that index stacked layers (int, pytree of ints, or callable).
    axis_name: a mapped axis over which leaves are split; squared norms are summed over it.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs ``params``.

  Raises:
    TypeError: at construction, for a hyperparameter that is not a real number (a str, None, a bool...), a
      flag that is not a bool, or a malformed ``mask``/``weight_decay_mask``/``layer_axes``; at ``init``,
      for parameters that are not floating point; at the first ``update``, for updates that are not.
    ValueError: at construction, for an infinite, NaN, out-of-range or float32-overflowing hyperparameter,
      an unknown option name, a learning-rate schedule that is negative or raises where it is checked (see
      :func:`lars_optax.lars`), ``trust_clip=True`` without ``learning_rate`` or ``learning_rate`` without
      ``trust_clip=True``.

    Each error about an argument has the attribute ``argument``, the argument's name (e.g.
    ``"weight_decay"``), so that a program can map it to its own setting without parsing the message.

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
    weight_decay_mask=weight_decay_mask,
    layer_axes=layer_axes,
    axis_name=axis_name,
  )
  _check_trust_clip(trust_clip, learning_rate)

  def init_fn(params: optax.Params) -> ScaleByTrustRatioState:
    return ScaleByTrustRatioState(count=jnp.zeros([], jnp.int32), diagnostics=layerwise.init(params))

  def update_fn(
    updates: optax.Updates,
    state: ScaleByTrustRatioState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, ScaleByTrustRatioState]:
    del extra_args
    layout = layerwise.layout(updates, params)
    lr = learning_rate_at(learning_rate, state.count) if learning_rate is not None else None

    def scale_leaf(
      grad: jax.Array, param: jax.Array, adapted: bool, decayed: bool, num_layer_axes: int
    ) -> _LeafScaling:
      diagnostics = layerwise.of_leaf(param, grad, adapted, decayed, num_layer_axes)
      if not adapted:  # u = g + β w (decayed) or g
        factor: jax.Array | float = 1.0
      else:  # u = λ d, LARC: min(λ/γ, 1) d
        ratio = diagnostics.trust_ratio
        factor = expand_to(clipped_ratio(ratio, lr) if lr is not None else ratio, grad)
      rates = LeafRates(factor, factor * layerwise.weight_decay if decayed else None)
      scaled = add_scaled_direction(None, grad, param, rates)
      return _LeafScaling(scaled.astype(grad.dtype), diagnostics)

    result = map_leaves(scale_leaf, _LeafScaling, updates, params, *layout)
    return result.update, ScaleByTrustRatioState(next_count(state.count), result.diagnostics)

  return optax.GradientTransformationExtraArgs(init_fn, as_update_fn(update_fn))


def _check_trust_clip(trust_clip: bool, learning_rate: MaybeSchedule) -> None:
  """``learning_rate`` is given with ``trust_clip=True`` and only then (the plain ratio does not use it)."""
  _validation.check_bool("trust_clip", trust_clip)
  if trust_clip != (learning_rate is not None):
    raise _validation.ArgumentValueError(
      "learning_rate",
      "learning_rate is required with trust_clip=True (LARC clips λ against γ_t) and only then (the trust "
      f"ratio alone does not use it); got trust_clip={trust_clip}, learning_rate={learning_rate!r}.",
    )
  if learning_rate is not None:
    _validation.check_learning_rate("learning_rate", learning_rate)


class _LeafScaling(NamedTuple):
  """One leaf's result in :func:`scale_by_trust_ratio`."""

  update: jax.Array
  diagnostics: TrustRatioDiagnostics
