"""lars_optax: LARS (Layer-wise Adaptive Rate Scaling) as composable Optax transformations.

Paper-exact by default (You, Gitman & Ginsburg 2017, Algorithm 1), with the variants other libraries use as
options, bias/batch-norm masking by default, float32 norms under bf16, and per-layer trust-ratio diagnostics.
"""

from lars_optax._diagnostics import find_diagnostics, flatten_diagnostics, get_diagnostics
from lars_optax._lars import LarsState, lars
from lars_optax._masks import every_leaf_mask, exclude_names, mask_table, print_mask_table, rank_mask
from lars_optax._schedules import (
  MLPerfHparams,
  epochs_to_steps,
  linear_scaling,
  mlperf_resnet50_hparams,
  sqrt_scaling,
  steps_per_epoch,
  warmup_polynomial_decay,
  warmup_polynomial_decay_from_epochs,
)
from lars_optax._trust_ratio import ScaleByTrustRatioState, TrustRatioDiagnostics, scale_by_trust_ratio

__version__ = "0.2.0"

__all__ = [
  "LarsState",
  "MLPerfHparams",
  "ScaleByTrustRatioState",
  "TrustRatioDiagnostics",
  "epochs_to_steps",
  "every_leaf_mask",
  "exclude_names",
  "find_diagnostics",
  "flatten_diagnostics",
  "get_diagnostics",
  "lars",
  "linear_scaling",
  "mask_table",
  "mlperf_resnet50_hparams",
  "print_mask_table",
  "rank_mask",
  "scale_by_trust_ratio",
  "sqrt_scaling",
  "steps_per_epoch",
  "warmup_polynomial_decay",
  "warmup_polynomial_decay_from_epochs",
]
