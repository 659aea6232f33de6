"""An independent float64 NumPy re-derivation of LARS and its variants, written from the formulas; and the
shared test problem (parameters, gradients, a changing learning rate) with a jitted runner for any optimizer.

Nothing here imports lars_optax. Each step is transcribed from You, Gitman & Ginsburg, "Large Batch Training
of Convolutional Networks" (2017, https://arxiv.org/abs/1708.03888: Algorithm 1 and eq. 6) and from the
variants' formulas as the README's variant table and ``lars_optax.lars``'s docstring state them (update norm
‖g + βw‖, LR outside the buffer, LARC's min(λ, γ), Nesterov), one layer slice at a time with explicit loops.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

NUM_STEPS = 4


def schedule(count: Any) -> Any:
  """A learning rate that changes every step (so inside/outside placements differ)."""
  return 0.5 / (1.0 + count) + 0.1 * count


def make_problem(seed: int = 0) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
  """A small parameter dict (kernels, a bias, a batch-norm scale, a zero kernel) and NUM_STEPS gradients."""
  rng = np.random.default_rng(seed)
  shapes = {
    "conv/kernel": (3, 3, 2, 4),
    "dense/kernel": (6, 5),
    "dense/bias": (5,),
    "bn/scale": (4,),
    "zero/kernel": (4, 3),  # zero-initialised: λ = 1 on its first step.
  }
  params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  params["zero/kernel"][:] = 0.0
  grads = [
    {k: (rng.normal(size=s) * 10.0 ** rng.uniform(-3, 1)).astype(np.float32) for k, s in shapes.items()}
    for _ in range(NUM_STEPS)
  ]
  return params, grads


def run_lars(opt: optax.GradientTransformation, params: Any, grads: Sequence[Any]) -> tuple[Any, Any]:
  """Runs any Optax transformation ``opt`` under jit over ``grads``; returns the final params and state."""
  params = jax.tree.map(jnp.asarray, params)
  state = opt.init(params)

  @jax.jit
  def step(params, state, grad):
    updates, state = opt.update(grad, state, params)
    return optax.apply_updates(params, updates), state

  for grad in grads:
    params, state = step(params, state, grad)
  return params, state


@dataclass(frozen=True)
class Hyper:
  momentum: float = 0.9
  weight_decay: float = 0.0
  trust_coefficient: float = 0.001
  eps: float = 0.0
  nesterov: bool = False
  trust_clip: bool = False
  trust_ratio_norm: str = "paper"  # or "update"
  placement: str = "inside"  # or "outside"
  excluded_lr_scale: float = 1.0


def slice_trust_ratio(w: np.ndarray, g: np.ndarray, h: Hyper) -> tuple[float, float, float]:
  """λ, ‖w‖ and the denominator's gradient norm for one layer (one slice), in float64."""
  w_norm = float(np.sqrt(np.sum(w.astype(np.float64) ** 2)))
  if h.trust_ratio_norm == "paper":
    g_norm = float(np.sqrt(np.sum(g.astype(np.float64) ** 2)))
    denominator = g_norm + h.weight_decay * w_norm + h.eps
  else:
    g_norm = float(np.sqrt(np.sum((g + h.weight_decay * w).astype(np.float64) ** 2)))
    denominator = g_norm + h.eps
  if w_norm == 0.0 or g_norm == 0.0:
    return 1.0, w_norm, g_norm
  return h.trust_coefficient * w_norm / denominator, w_norm, g_norm


def run(
  params: dict[str, np.ndarray],
  grads: Sequence[dict[str, np.ndarray]],
  learning_rates: Sequence[float],
  mask: dict[str, bool],
  h: Hyper,
  layer_axes: dict[str, int] | None = None,
  decay_mask: dict[str, bool] | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
  """Applies len(grads) LARS steps; returns the final parameters and each step's trust ratios.

  ``mask`` chooses the adapted leaves (trust ratio), ``decay_mask`` (default: ``mask``) the decayed ones
  (weight decay). A leaf that is not decayed has β = 0 both in its trust ratio and in its direction; an
  excluded leaf that is decayed follows momentum SGD on g + βw at the excluded rate.
  """
  decay_mask = mask if decay_mask is None else decay_mask
  w = {k: np.array(v, np.float64) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in w.items()}
  ratios_per_step = []
  for g_t, lr in zip(grads, learning_rates, strict=True):
    ratios = {}
    for name in w:
      k = (layer_axes or {}).get(name, 0)
      g = np.array(g_t[name], np.float64)
      lam = np.ones(w[name].shape[:k])
      rate = np.zeros(w[name].shape[:k])
      leaf_h = h if decay_mask[name] else replace(h, weight_decay=0.0)
      direction = g + leaf_h.weight_decay * w[name]
      for index in np.ndindex(*w[name].shape[:k]):
        if mask[name]:
          lam[index] = slice_trust_ratio(w[name][index], g[index], leaf_h)[0]
          if h.placement == "inside":
            rate[index] = min(lam[index], lr) if h.trust_clip else lr * lam[index]
          elif h.trust_clip:
            rate[index] = min(lam[index] / lr, 1.0) if lr > 0 else 1.0
          else:
            rate[index] = lam[index]
        else:
          rate[index] = h.excluded_lr_scale * lr if h.placement == "inside" else 1.0
      rate = rate.reshape(rate.shape + (1,) * (w[name].ndim - k))
      v[name] = h.momentum * v[name] + rate * direction
      step = h.momentum * v[name] + rate * direction if h.nesterov else v[name]
      if h.placement == "inside":
        w[name] = w[name] - step
      else:
        scale = lr if mask[name] else h.excluded_lr_scale * lr
        w[name] = w[name] - scale * step
      ratios[name] = lam
    ratios_per_step.append(ratios)
  return w, ratios_per_step
