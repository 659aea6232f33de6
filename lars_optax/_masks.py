"""Which leaves LARS adapts: masks by rank or by name, resolved and checked against the parameters.

A mask is a pytree of Python bools with the structure of the parameters: ``True`` where a leaf is *adapted*
(weight decay and trust ratio, paper Algorithm 1) and ``False`` where it is *excluded* (plain momentum SGD, no
weight decay). Biases and batch-norm scales/offsets are excluded by default, as in MLPerf's reference and in
the paper's own Caffe setting, where they carry no weight decay.

Stacked layers (``nn.scan``, ``vmap``-ed blocks) put several layers in one leaf behind leading axes; a
``layer_axes`` count per leaf says how many leading axes index layers, so that norms are taken per slice and
the rank test looks at the rank of one layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from lars_optax._validation import ArgumentTypeError, ArgumentValueError, is_int

Params = Any
MaskTree = Any
"""A pytree of bools with the structure of the parameters (True: adapted)."""
Mask = MaskTree | Callable[[Params], MaskTree] | None
"""None (the rank mask), a :data:`MaskTree`, or a callable mapping the parameters to one."""
LayerAxes = int | Any | Callable[[Params], Any] | None
"""None (0), an int for every leaf, a pytree of ints with the structure of the parameters, or a callable."""

_LAYER_AXES_ALLOWED = (
  "None, a non-negative int, a pytree of non-negative ints with the structure of the parameters, or a "
  "callable of the parameters returning one"
)
_MASK_ALLOWED = "None, a pytree of bools with the structure of the parameters, or a callable returning one"


def check_layer_axes(layer_axes: LayerAxes) -> None:
  """Raises TypeError/ValueError naming ``layer_axes`` and what it may be, unless it is of an allowed form.

  Checks what can be checked without the parameters: a callable is not called, and a pytree's structure is
  compared with the parameters only by :func:`resolve_layer_axes`.
  """
  if layer_axes is None or callable(layer_axes):
    return
  if is_int(layer_axes):
    if layer_axes < 0:
      raise ArgumentValueError("layer_axes", f"layer_axes must be {_LAYER_AXES_ALLOWED}; got {layer_axes}.")
    return
  if jax.tree_util.treedef_is_leaf(jax.tree.structure(layer_axes)):
    raise ArgumentTypeError(
      "layer_axes",
      f"layer_axes must be {_LAYER_AXES_ALLOWED}; got {type(layer_axes).__name__} {layer_axes!r}.",
    )
  for path, count in jax.tree_util.tree_flatten_with_path(layer_axes)[0]:
    if not is_int(count):
      raise ArgumentTypeError(
        "layer_axes",
        f"layer_axes at {leaf_name(path)!r} must be an int, got {type(count).__name__} {count!r}.",
      )
    if count < 0:
      raise ArgumentValueError("layer_axes", f"layer_axes at {leaf_name(path)!r} must be >= 0, got {count}.")


def check_mask(mask: Mask, name: str = "mask") -> None:
  """Raises TypeError naming ``name`` unless ``mask`` is None, a callable, or a pytree of bools."""
  if mask is None or callable(mask):
    return
  if isinstance(mask, str):
    raise ArgumentTypeError(
      name,
      f"{name} must be {_MASK_ALLOWED}; got the string {mask!r} (to exclude leaves by name, pass "
      f"lars_optax.exclude_names({mask!r})).",
    )
  for path, flag in jax.tree_util.tree_flatten_with_path(mask)[0]:
    if not isinstance(flag, bool | np.bool_):
      where = f" at {leaf_name(path)!r}" if path else ""
      raise ArgumentTypeError(
        name,
        f"{name}{where} must be a Python bool, got {type(flag).__name__}. Masks select code paths, so "
        f"they must be concrete ({_MASK_ALLOWED}).",
      )


def leaf_name(path: Sequence[Any], separator: str = "/") -> str:
  """A pytree key path as users see it: ``"Conv_0/kernel"`` (``jax.tree_util.keystr``, ``/``-separated).

  A trailing ``.value`` attribute (where Flax NNX ``State`` keeps its arrays) is dropped, so that a Linen
  dict and an NNX state of the same model give the same names.
  """
  if path and path[-1] == jax.tree_util.GetAttrKey("value"):
    path = path[:-1]
  return jax.tree_util.keystr(tuple(path), simple=True, separator=separator)


def _ndim(leaf: Any) -> int:
  return len(np.shape(leaf))


def resolve_layer_axes(layer_axes: LayerAxes, params: Params) -> Any:
  """Returns a pytree of ints (leading layer axes per leaf) with the structure of ``params``.

  Args:
    layer_axes: ``None`` or an int (the same count for every leaf), a pytree of ints with the structure of
      ``params``, or a callable mapping ``params`` to such a pytree.
    params: the parameters.

  Raises:
    TypeError: when ``layer_axes`` or a count in it is not of an allowed form (:func:`check_layer_axes`).
    ValueError: when a count is negative, exceeds a leaf's rank, or the structure does not match.
  """
  if layer_axes is None:
    layer_axes = 0
  if callable(layer_axes):
    layer_axes = layer_axes(params)
  check_layer_axes(layer_axes)
  if is_int(layer_axes):
    same_count = int(layer_axes)
    counts = jax.tree.map(lambda _: same_count, params)
  else:
    _check_same_structure("layer_axes", layer_axes, params)
    counts = layer_axes
  for path, (count, leaf) in _zip_with_path(counts, params):
    if not count <= _ndim(leaf):
      raise ArgumentValueError(
        "layer_axes",
        f"layer_axes at {leaf_name(path)!r} must be in [0, {_ndim(leaf)}] (the leaf's rank), got {count}.",
      )
  return jax.tree.map(int, counts)


def rank_mask(params: Params, *, layer_axes: LayerAxes = None) -> MaskTree:
  """The default mask: a leaf is adapted when the rank of one layer is above 1.

  A leaf of rank ``r`` with ``a`` leading layer axes is adapted when ``r - a > 1``: kernels are adapted;
  biases, batch-norm scales and offsets (rank 1, or ``(L, C)`` when stacked over ``L`` layers) are not.

  Args:
    params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
    layer_axes: leading layer axes, as in :func:`resolve_layer_axes`.

  Returns:
    A pytree of Python bools with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp, lars_optax
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
    >>> lars_optax.rank_mask(params)
    {'Dense_0': {'bias': False, 'kernel': True}}
    >>> stacked = {"blocks": {"kernel": jnp.ones((6, 3, 4)), "bias": jnp.zeros((6, 4))}}  # 6 scanned layers
    >>> lars_optax.rank_mask(stacked, layer_axes=1)
    {'blocks': {'bias': False, 'kernel': True}}
  """
  counts = resolve_layer_axes(layer_axes, params)
  return jax.tree.map(lambda leaf, count: _ndim(leaf) - count > 1, params, counts)


def exclude_names(*substrings: str) -> Callable[[Params], MaskTree]:
  """A mask that excludes every leaf whose path contains one of ``substrings``.

  Paths are matched as strings like ``"ResNetBlock_0/BatchNorm_1/scale"``, so
  ``exclude_names("bias", "scale", "BatchNorm")`` excludes biases, batch-norm parameters and any other
  ``scale`` leaf, whatever their rank. Works on Flax linen dicts and NNX ``State`` alike.

  Args:
    *substrings: case-sensitive parts of a path that exclude a leaf.

  Returns:
    A callable mapping the parameters to a pytree of bools (``True`` = adapted).

  Example:
    >>> import jax.numpy as jnp, lars_optax
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 4))}, "LayerNorm_0": {"scale": jnp.ones((2, 4))}}
    >>> lars_optax.exclude_names("LayerNorm")(params)  # a rank-2 scale, excluded by name
    {'Dense_0': {'kernel': True}, 'LayerNorm_0': {'scale': False}}
    >>> opt = lars_optax.lars(0.1, mask=lars_optax.exclude_names("bias", "LayerNorm"))
  """
  if not substrings or not all(isinstance(s, str) and s for s in substrings):
    raise ArgumentValueError(
      "substrings", f"substrings must be one or more non-empty strings, got {substrings!r}."
    )

  def mask_fn(params: Params) -> MaskTree:
    return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(s in leaf_name(path) for s in substrings), params
    )

  return mask_fn


def every_leaf_mask(params: Params) -> MaskTree:
  """A mask that adapts every leaf: the paper's Algorithm 1 applied to every layer, biases included.

  Each bias and normalisation parameter then gets its own trust ratio (and weight decay) like a kernel,
  instead of the default's plain momentum SGD at the global learning rate. Choose it for networks without
  batch norm trained at the paper's global rates (γ_0 of 1 to 30): there a bias stepped by plain SGD at
  γ_0 takes steps far larger than the trust ratio would allow it, and training can collapse to chance (the
  README's "Results at small scale" measures this).

  Args:
    params: the parameters (arrays or ``jax.ShapeDtypeStruct``).

  Returns:
    A pytree of ``True`` with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp, lars_optax
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
    >>> lars_optax.every_leaf_mask(params)
    {'Dense_0': {'bias': True, 'kernel': True}}
    >>> opt = lars_optax.lars(2.0, weight_decay=5e-4, mask=lars_optax.every_leaf_mask)
  """
  return jax.tree.map(lambda _: True, params)


def resolve_mask(mask: Mask, params: Params, layer_axes: LayerAxes = None, name: str = "mask") -> MaskTree:
  """Turns ``mask`` into a checked pytree of Python bools with the structure of ``params``.

  Args:
    mask: ``None`` (the :func:`rank_mask` default), a pytree of bools, or a callable of the parameters.
    params: the parameters.
    layer_axes: leading layer axes, used by the default mask.
    name: the argument's name in error messages (``mask`` or ``weight_decay_mask``).

  Raises:
    ValueError: when the mask's structure does not match the parameters.
    TypeError: when a mask leaf is not a concrete bool (a traced mask cannot select code paths).
  """
  if mask is None:
    return rank_mask(params, layer_axes=layer_axes)
  tree = mask(params) if callable(mask) else mask
  check_mask(tree, name)
  _check_same_structure(name, tree, params)
  return jax.tree.map(bool, tree)


def resolve_weight_decay_mask(
  weight_decay_mask: Mask, mask: Mask, params: Params, layer_axes: LayerAxes = None
) -> MaskTree:
  """The leaves that get weight decay: ``weight_decay_mask`` resolved, or those of ``mask`` when None."""
  if weight_decay_mask is None:
    return resolve_mask(mask, params, layer_axes)
  return resolve_mask(weight_decay_mask, params, layer_axes, name="weight_decay_mask")


def mask_table(
  params: Params, mask: Mask = None, *, weight_decay_mask: Mask = None, layer_axes: LayerAxes = None
) -> str:
  """A table of what LARS does to each leaf: path, shape, size, adapted and decayed yes/no, plus totals.

  Args:
    params: the parameters (arrays or ``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape``).
    mask: as accepted by :func:`lars_optax.lars`: the leaves with a trust ratio ("adapted").
    weight_decay_mask: as accepted by :func:`lars_optax.lars`: the leaves with weight decay ("decayed");
      ``None`` follows ``mask``.
    layer_axes: as accepted by :func:`lars_optax.lars`.

  Returns:
    The table as a string, ending with a summary line of leaf and parameter counts.

  Example:
    >>> import jax.numpy as jnp, lars_optax
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
    >>> lars_optax.mask_table(params).splitlines()[-1]
    '2 leaves: 1 adapted (12 parameters), 1 excluded (4 parameters); 1 decayed (12 parameters)'
  """
  adapted = jax.tree.leaves(resolve_mask(mask, params, layer_axes))
  decayed = jax.tree.leaves(resolve_weight_decay_mask(weight_decay_mask, mask, params, layer_axes))
  header = ("path", "shape", "size", "adapted", "decayed")
  rows = []
  for (path, leaf), is_adapted, is_decayed in zip(
    jax.tree_util.tree_flatten_with_path(params)[0], adapted, decayed, strict=True
  ):
    shape = np.shape(leaf)
    yes_no = ("yes" if is_adapted else "no", "yes" if is_decayed else "no")
    rows.append((leaf_name(path), str(tuple(shape)), f"{int(np.prod(shape)):,}", *yes_no))
  widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
  lines = [
    "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
    for row in [header, *rows]
  ]
  lines.insert(1, "  ".join("-" * width for width in widths))
  sizes = [int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params)]

  def total(flags: list[bool], wanted: bool, what: str) -> str:
    chosen = [size for size, flag in zip(sizes, flags, strict=True) if flag == wanted]
    return f"{len(chosen)} {what} ({sum(chosen):,} parameters)"

  lines.append(
    f"{len(sizes)} leaves: {total(adapted, True, 'adapted')}, {total(adapted, False, 'excluded')}; "
    f"{total(decayed, True, 'decayed')}"
  )
  return "\n".join(lines)


def print_mask_table(
  params: Params, mask: Mask = None, *, weight_decay_mask: Mask = None, layer_axes: LayerAxes = None
) -> None:
  """Prints :func:`mask_table` for ``params``: see what your masks do before training.

  Example:
    >>> import jax.numpy as jnp, lars_optax
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
    >>> params["BatchNorm_0"] = {"scale": jnp.ones(4)}
    >>> lars_optax.print_mask_table(params, weight_decay_mask=lars_optax.exclude_names("BatchNorm"))
    path               shape   size  adapted  decayed
    -----------------  ------  ----  -------  -------
    BatchNorm_0/scale  (4,)    4     no       no
    Dense_0/bias       (4,)    4     no       yes
    Dense_0/kernel     (3, 4)  12    yes      yes
    3 leaves: 1 adapted (12 parameters), 2 excluded (8 parameters); 2 decayed (16 parameters)
  """
  print(mask_table(params, mask, weight_decay_mask=weight_decay_mask, layer_axes=layer_axes))


def _check_same_structure(name: str, tree: Any, params: Params) -> None:
  tree_def: Any = jax.tree.structure(tree)  # PyTreeDefs (untyped for mypy)
  params_def: Any = jax.tree.structure(params)
  if tree_def != params_def:
    raise ArgumentValueError(
      name,
      f"{name} must have the structure of the parameters.\n  {name}: {_summary(tree_def)}\n"
      f"  params: {_summary(params_def)}",
    )


def _summary(treedef: Any, limit: int = 400) -> str:
  text = str(treedef)
  return text if len(text) <= limit else text[:limit] + "..."


def _zip_with_path(tree: Any, params: Params) -> list[tuple[Any, tuple[Any, Any]]]:
  """Pairs the leaves of ``tree`` and ``params`` (same structure), with the key path of each."""
  paths_and_values = jax.tree_util.tree_flatten_with_path(tree)[0]
  param_leaves = jax.tree.leaves(params)
  return [(path, (value, leaf)) for (path, value), leaf in zip(paths_and_values, param_leaves, strict=True)]
