"""Reading LARS's per-layer diagnostics (λ, ‖w‖, ‖g‖) out of any optimizer state that contains them.

Both :func:`lars_optax.lars` and :func:`lars_optax.scale_by_trust_ratio` record, after each update, the
trust ratio, the parameter norm before the update and the gradient norm of every layer. They are float32
scalars per layer, cheap enough to return from every jitted or pmapped step. These helpers find them inside
``optax.chain``, ``optax.MultiSteps``, ``optax.inject_hyperparams``, ``optax.apply_if_finite`` and any other
nesting of states, and flatten them for a metrics writer.
"""

from typing import Any

import jax
import optax

from lars_optax import _masks
from lars_optax._trust_ratio import TrustRatioDiagnostics
from lars_optax._validation import ArgumentTypeError, ArgumentValueError

DIAGNOSTIC_FIELDS = TrustRatioDiagnostics._fields


def find_diagnostics(opt_state: Any) -> dict[str, TrustRatioDiagnostics]:
  """All LARS diagnostics in ``opt_state``, keyed by where they sit in the state (e.g. ``"0/diagnostics"``).

  Args:
    opt_state: any optimizer state (a pytree), possibly replicated across devices.

  Returns:
    A dict, empty when the state holds no LARS transformation.

  Example:
    >>> import jax.numpy as jnp, optax, lars_optax
    >>> opt = optax.chain(lars_optax.scale_by_trust_ratio(), optax.sgd(0.1))
    >>> list(lars_optax.find_diagnostics(opt.init({"kernel": jnp.ones((2, 2))})))
    ['0/diagnostics']
  """
  found = optax.tree_utils.tree_get_all_with_path(
    opt_state, "diagnostics", filtering=lambda _, node: isinstance(node, TrustRatioDiagnostics)
  )
  return {_state_path(path): node for path, node in found}


def _state_path(path: tuple[Any, ...]) -> str:
  """``"0/diagnostics"``: the path of a state field, NamedTuple fields by their name (``keystr`` style)."""
  keys = [
    jax.tree_util.GetAttrKey(key.name) if isinstance(key, optax.tree_utils.NamedTupleKey) else key
    for key in path
  ]
  return _masks.leaf_name(keys)


def get_diagnostics(opt_state: Any) -> TrustRatioDiagnostics:
  """The diagnostics of the one LARS transformation in ``opt_state``.

  Each field of the result is a pytree with the structure of the parameters, holding float32 per-layer
  values of the *last* update (zeros before the first):

  - ``trust_ratio``: λ from the formula (before LARC's clip; 1 for excluded leaves);
  - ``param_norm``: ‖w‖ before the update;
  - ``grad_norm``: ‖g‖ for ``trust_ratio_norm="paper"`` and excluded leaves, ‖g + βw‖ for ``"update"``.

  Under ``optax.MultiSteps`` they change only when the inner optimizer steps; under
  ``optax.apply_if_finite`` a rejected step keeps the previous values. Under ``pmap`` each leaf carries the
  leading device axis of the replicated state.

  Example:
    >>> import jax.numpy as jnp, optax, lars_optax
    >>> params = {"kernel": jnp.ones((2, 2))}
    >>> opt = optax.MultiSteps(lars_optax.lars(0.1), every_k_schedule=1)
    >>> state = opt.init(params)
    >>> _, state = opt.update({"kernel": jnp.ones((2, 2))}, state, params)
    >>> round(float(lars_optax.get_diagnostics(state).trust_ratio["kernel"]), 6)
    0.001

  Raises:
    ValueError: when the state holds no LARS transformation, or more than one (then use
      :func:`find_diagnostics`).
  """
  found = find_diagnostics(opt_state)
  if len(found) != 1:
    where = ", ".join(found) or "nowhere"
    raise ArgumentValueError(
      "opt_state",
      f"opt_state must hold exactly one lars/scale_by_trust_ratio state; found {len(found)} ({where}). "
      "Use lars_optax.find_diagnostics to get all of them.",
    )
  return next(iter(found.values()))


def flatten_diagnostics(diagnostics: TrustRatioDiagnostics, separator: str = "/") -> dict[str, Any]:
  """Flattens diagnostics to ``{"trust_ratio/Conv_0/kernel": value, "param_norm/...": ...}`` for logging.

  Args:
    diagnostics: as returned by :func:`get_diagnostics`.
    separator: joins the field name and the parameter path.

  Returns:
    A flat dict of the per-layer arrays (scalars for ordinary layers), field-major.

  Raises:
    TypeError: when ``diagnostics`` is not a :class:`TrustRatioDiagnostics` (e.g. ``None``, or a whole
      optimizer state: pass it through :func:`get_diagnostics` first).

  Example:
    >>> import jax.numpy as jnp, lars_optax
    >>> params = {"kernel": jnp.ones((2, 2))}
    >>> opt = lars_optax.lars(0.1)
    >>> _, state = opt.update(params, opt.init(params), params)
    >>> flat = lars_optax.flatten_diagnostics(lars_optax.get_diagnostics(state))
    >>> {key: round(float(value), 6) for key, value in flat.items()}
    {'trust_ratio/kernel': 0.001, 'param_norm/kernel': 2.0, 'grad_norm/kernel': 2.0}
  """
  if not isinstance(diagnostics, TrustRatioDiagnostics):
    raise ArgumentTypeError(
      "diagnostics",
      "diagnostics must be a lars_optax.TrustRatioDiagnostics (from lars_optax.get_diagnostics(opt_state) "
      f"or a value of lars_optax.find_diagnostics(opt_state)), got {type(diagnostics).__name__}.",
    )
  flat = {}
  for field in DIAGNOSTIC_FIELDS:
    for path, value in jax.tree_util.tree_flatten_with_path(getattr(diagnostics, field))[0]:
      flat[f"{field}{separator}{_masks.leaf_name(path, separator)}"] = value
  return flat
