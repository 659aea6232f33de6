"""Layers shared by the model families: Caffe-style local response normalisation, checked fields."""

import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn


class LocalResponseNorm(nn.Module):
  """Local response normalisation across channels, with Caffe's convention.

  For channel c of an activation a (channels on the last axis),

      b_c = a_c / (k + (α / n) · Σ_{c'=c-⌊n/2⌋}^{c+⌊n/2⌋} a_{c'}²)^β,

  where the sum runs over the n channels centred on c that exist (the window is clipped, not
  wrapped, at the first and last channel). Caffe's ``LRN`` layer (``norm_region: ACROSS_CHANNELS``)
  divides ``alpha`` by the window size n, and so does this module. TensorFlow's
  ``tf.nn.local_response_normalization(depth_radius=r, bias=k, alpha=α_tf, beta=β)`` does not: the
  same layer there is ``depth_radius=(n - 1) // 2, alpha=α / n``. The defaults are the values of
  the Caffe reference AlexNet (n = 5, α = 1e-4, β = 0.75, k = 1).

  The normaliser is computed in float32 whatever the input dtype, and the output is cast back to
  ``dtype`` (or to the input's dtype when ``dtype`` is None). The layer has no parameters.

  Attributes:
    size: n, the number of channels in the window (odd).
    alpha: α, Caffe's scale (divided by n before use).
    beta: β, the exponent.
    k: k, the additive constant ("bias" in TensorFlow).
    dtype: the output dtype; None keeps the input's.

  References:
    Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional Neural
    Networks", NeurIPS 2012, section 3.3.
    Jia et al., "Caffe: Convolutional Architecture for Fast Feature Embedding", 2014,
    https://caffe.berkeleyvision.org/tutorial/layers/lrn.html
  """

  size: int = 5
  alpha: float = 1e-4
  beta: float = 0.75
  k: float = 1.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.size < 1 or self.size % 2 == 0:
      raise ValueError(f"size must be a positive odd number of channels, got {self.size!r}.")
    half = self.size // 2
    x32 = jnp.asarray(x, jnp.float32)
    window = (1,) * (x.ndim - 1) + (self.size,)
    padding = ((0, 0),) * (x.ndim - 1) + ((half, half),)
    # Σ a_{c'}² over the clipped window: zero padding adds nothing to the sum.
    sum_sq = jax.lax.reduce_window(x32 * x32, 0.0, jax.lax.add, window, (1,) * x.ndim, padding)
    y = x32 / (self.k + (self.alpha / self.size) * sum_sq) ** self.beta
    return jnp.asarray(y, self.dtype or x.dtype)


# A numeric field's valid range: (test, wording). Models list theirs in ``FIELD_RANGES``.
Ranges = Mapping[str, tuple[Callable[[Any], bool], str]]
UNIT_INTERVAL = (lambda value: 0 <= value < 1, "in [0, 1)")
POSITIVE = (lambda value: value > 0, "> 0")
NON_NEGATIVE = (lambda value: value >= 0, ">= 0")
POSITIVE_ODD = (lambda value: value > 0 and value % 2 == 1, "a positive odd number")


class CheckedModule(nn.Module):
  """A module whose numeric fields are checked against ``FIELD_RANGES`` when it is built.

  A field out of range raises ``ValueError`` (``TypeError`` for a value that is not a number) whose
  ``argument`` attribute is the field's name, so that a caller can say which setting to fix.
  """

  FIELD_RANGES: ClassVar[Ranges] = {}

  def __post_init__(self) -> None:
    for name, (test, wording) in self.FIELD_RANGES.items():
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Real):
        error: Exception = TypeError(f"{name} must be a number {wording}, got {value!r}.")
      elif not test(value):
        error = ValueError(f"{name} must be {wording}, got {value!r}.")
      else:
        continue
      error.argument = name  # type: ignore[attr-defined]
      raise error
    super().__post_init__()
