"""Every bad input to lars_optax gets a clear error, early: a table of (call, exception, message fragment).

Each row calls one public entry point with one bad argument. The error must be raised at construction
(``when="construction"``), or at ``init`` for what only the parameters show (``when="init"``), and its message
must contain the fragment: the argument's name and, for options, the allowed values.
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_optax

PARAMS = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}


class Case(NamedTuple):
  id: str
  call: Any  # () -> anything; must raise
  error: type[Exception]
  fragment: str
  when: str = "construction"


def lars(**kwargs):
  return lambda: lars_optax.lars(**{"learning_rate": 0.1, **kwargs})


def trust(**kwargs):
  return lambda: lars_optax.scale_by_trust_ratio(**kwargs)


def init_with(make_opt, params):
  return lambda: make_opt().init(params)


def call(fn, *args, **kwargs):
  return lambda: fn(*args, **kwargs)


# Values that are never a valid number, with the error each must give.
NOT_A_NUMBER = [
  ("inf", math.inf, ValueError, "must be finite"),
  ("-inf", -math.inf, ValueError, "must be finite"),
  ("nan", math.nan, ValueError, "must be finite"),
  ("bool", True, TypeError, "must be a real number, not a bool"),
  ("numpy-bool", np.True_, TypeError, "must be a real number, not a bool"),
  ("str", "0.1", TypeError, "must be a real number"),
  ("None", None, TypeError, "must be a real number"),
  ("complex", 1j, TypeError, "must be a real number"),
  ("numpy-vector", np.array([0.1, 0.2]), ValueError, "must be a scalar"),
  ("jax-vector", jnp.array([0.1, 0.2]), ValueError, "must be a scalar"),
  ("jax-bool", jnp.asarray(True), TypeError, "must be a real number"),
]
LARS_NUMBERS = ["learning_rate", "momentum", "weight_decay", "trust_coefficient", "eps", "excluded_lr_scale"]
TRUST_NUMBERS = ["weight_decay", "trust_coefficient", "eps", "learning_rate"]


def negative_after(steps):
  return lambda count: 0.1 - 0.1 * count / steps  # a hand-written linear decay that overshoots below 0


CASES = [
  *(
    Case(f"lars-{arg}-{vid}", lars(**{arg: v}), e, f"{arg} {m}")
    for arg in LARS_NUMBERS
    for vid, v, e, m in NOT_A_NUMBER
  ),
  *(
    Case(f"trust-{arg}-{vid}", trust(**{arg: v, "trust_clip": arg == "learning_rate"}), e, f"{arg} {m}")
    for arg in TRUST_NUMBERS
    for vid, v, e, m in NOT_A_NUMBER
    if not (arg == "learning_rate" and v is None)
  ),
  # Out of range.
  Case("lars-negative-lr", lars(learning_rate=-0.1), ValueError, "learning_rate must be >= 0"),
  Case("lars-momentum-1", lars(momentum=1.0), ValueError, "momentum must be in [0, 1)"),
  Case("lars-momentum-negative", lars(momentum=-0.1), ValueError, "momentum must be in [0, 1)"),
  Case("lars-trust-coefficient-0", lars(trust_coefficient=0.0), ValueError, "trust_coefficient must be > 0"),
  Case("lars-negative-eps", lars(eps=-1e-8), ValueError, "eps must be >= 0"),
  Case("lars-negative-wd", lars(weight_decay=-1e-4), ValueError, "weight_decay must be >= 0"),
  Case(
    "lars-negative-wd-numpy", lars(weight_decay=np.float32(-1e-4)), ValueError, "weight_decay must be >= 0"
  ),
  Case(
    "lars-negative-excluded-scale", lars(excluded_lr_scale=-1), ValueError, "excluded_lr_scale must be >= 0"
  ),
  # Schedules that go negative or non-finite where they are checked.
  Case("lars-schedule-negative-at-0", lars(learning_rate=lambda c: -1.0), ValueError, "at step 0"),
  Case(
    "lars-schedule-negative-later", lars(learning_rate=negative_after(5_000)), ValueError, "at step 10000"
  ),
  Case(
    "lars-schedule-inf", lars(learning_rate=lambda c: jnp.inf), ValueError, "learning_rate must be a schedule"
  ),
  Case("lars-schedule-nan", lars(learning_rate=lambda c: c * jnp.nan), ValueError, "finite values >= 0"),
  Case(
    "lars-optax-linear-to-negative",
    lars(learning_rate=optax.linear_schedule(0.1, -0.1, 100)),
    ValueError,
    "learning_rate must be a schedule of finite values >= 0",
  ),
  Case(
    "trust-schedule-negative",
    trust(trust_clip=True, learning_rate=negative_after(50)),
    ValueError,
    "learning_rate must be a schedule",
  ),
  # Flags.
  *(
    Case(f"{who}-{flag}-{vid}", make(**{flag: v}), TypeError, f"{flag} must be a Python bool")
    for who, make, flags in (("lars", lars, ("nesterov", "trust_clip")), ("trust", trust, ("trust_clip",)))
    for flag in flags
    for vid, v in (("int", 1), ("str", "yes"), ("None", None), ("numpy-bool", np.True_))
  ),
  Case("trust-clip-without-lr", trust(trust_clip=True), ValueError, "learning_rate is required"),
  # Option names: the message lists the allowed values.
  *(
    Case(f"{who}-{option}-{vid}", make(**{option: v}), e, f"{option} must be one of {allowed}")
    for who, make, options in (
      ("lars", lars, ("trust_ratio_norm", "learning_rate_placement")),
      ("trust", trust, ("trust_ratio_norm",)),
    )
    for option in options
    for allowed in [
      "['paper', 'update']" if option == "trust_ratio_norm" else "['inside', 'outside']",
    ]
    for vid, v, e in (("unknown", "adam", ValueError), ("None", None, TypeError), ("bool", True, TypeError))
  ),
  # layer_axes: the message names the argument and what it may be.
  *(
    Case(f"{who}-layer-axes-{vid}", make(layer_axes=v), e, m)
    for who, make in (("lars", lars), ("trust", trust))
    for vid, v, e, m in (
      ("float", 1.5, TypeError, "layer_axes must be None, a non-negative int, a pytree of non-negative ints"),
      ("str", "1", TypeError, "layer_axes must be None, a non-negative int"),
      ("bool", True, TypeError, "layer_axes must be None, a non-negative int"),
      ("negative", -1, ValueError, "layer_axes must be None, a non-negative int"),
      ("tree-float", {"kernel": 1.5, "bias": 0}, TypeError, "layer_axes at 'kernel' must be an int"),
      ("tree-negative", {"kernel": -1, "bias": 0}, ValueError, "layer_axes at 'kernel' must be >= 0"),
    )
  ),
  # accumulator_dtype: the message names the argument and the allowed dtypes.
  *(
    Case(
      f"lars-accumulator-{vid}", lars(accumulator_dtype=v), e, "accumulator_dtype must be None or a floating"
    )
    for vid, v, e in (
      ("floaty", "floaty", ValueError),
      ("int32", jnp.int32, ValueError),
      ("int8-name", "int8", ValueError),
      ("complex", jnp.complex64, ValueError),
      ("bool-dtype", jnp.bool_, ValueError),
      ("float-number", 3.5, TypeError),
      ("True", True, TypeError),
    )
  ),
  # mask and axis_name.
  *(
    Case(f"{who}-mask-{vid}", make(mask=v), TypeError, m)
    for who, make in (("lars", lars), ("trust", trust))
    for vid, v, m in (
      ("str", "bias", "lars_optax.exclude_names('bias')"),
      ("tree-int", {"kernel": 1, "bias": 0}, "mask at 'bias' must be a Python bool"),
      ("float", 1.0, "mask must be a Python bool"),
    )
  ),
  Case("lars-axis-name-int", lars(axis_name=1), TypeError, "axis_name must be None, a mapped axis name"),
  Case("trust-axis-name-tuple-int", trust(axis_name=("a", 2)), TypeError, "axis_name must be None"),
  # Parameters that cannot take a fractional update: at init, naming the leaf.
  *(
    Case(f"{who}-params-{vid}", init_with(make, params), TypeError, m, when="init")
    for who, make in (("lars", lars()), ("trust", trust()))
    for vid, params, m in (
      (
        "int32",
        {"kernel": jnp.ones((2, 2), jnp.int32)},
        "params at 'kernel' must be floating point, got int32",
      ),
      ("python-int", {"step": 3}, "params at 'step' must be floating point"),
      ("bool", {"flag": jnp.ones(2, bool)}, "params at 'flag' must be floating point, got bool"),
      ("shape-dtype", {"k": jax.ShapeDtypeStruct((2, 2), jnp.int8)}, "params at 'k' must be floating point"),
    )
  ),
  # Schedules.
  *(
    Case(
      f"schedule-{arg}-{vid}",
      call(lars_optax.warmup_polynomial_decay, **{"peak_value": 1.0, "total_steps": 10, arg: v}),
      e,
      f"{arg} {m}",
    )
    for arg in ("peak_value", "init_value", "end_value", "power")
    for vid, v, e, m in NOT_A_NUMBER[:8]
  ),
  *(
    Case(
      f"schedule-{arg}-{vid}",
      call(lars_optax.warmup_polynomial_decay, 1.0, **{"total_steps": 10, arg: v}),
      e,
      arg,
    )
    for arg in ("total_steps", "warmup_steps")
    for vid, v, e in (
      ("float", 10.0, TypeError),
      ("inf", math.inf, TypeError),
      ("None", None, TypeError),
      ("bool", True, TypeError),
    )
  ),
  Case(
    "schedule-warmup-flag",
    call(lars_optax.warmup_polynomial_decay, 1.0, total_steps=10, warmup_from_first_step=1),
    TypeError,
    "warmup_from_first_step",
  ),
  *(
    Case(
      f"from-epochs-{arg}-{vid}",
      call(
        lars_optax.warmup_polynomial_decay_from_epochs,
        1.0,
        **{"num_epochs": 2.0, "warmup_epochs": 1.0, "steps_per_epoch": 3, arg: v},
      ),
      e,
      f"{arg} {m}",
    )
    for arg in ("num_epochs", "warmup_epochs", "steps_per_epoch", "peak_value")
    for vid, v, e, m in NOT_A_NUMBER[:7]
    if not (arg == "peak_value")
  ),
  *(
    Case(
      f"epochs-to-steps-{arg}-{vid}",
      call(lars_optax.epochs_to_steps, **{"epochs": 2.0, "steps_per_epoch": 3, arg: v}),
      e,
      f"{arg} {m}",
    )
    for arg in ("epochs", "steps_per_epoch")
    for vid, v, e, m in NOT_A_NUMBER[:7]
  ),
  Case(
    "epochs-to-steps-zero-steps",
    call(lars_optax.epochs_to_steps, 2.0, 0),
    ValueError,
    "steps_per_epoch must be > 0",
  ),
  *(
    Case(
      f"steps-per-epoch-{arg}-{vid}",
      call(lars_optax.steps_per_epoch, **{"num_examples": 100, "batch_size": 10, arg: v}),
      e,
      arg,
    )
    for arg in ("num_examples", "batch_size")
    for vid, v, e in (
      ("float", 100.5, TypeError),
      ("None", None, TypeError),
      ("bool", True, TypeError),
      ("str", "10", TypeError),
      ("zero", 0, ValueError),
    )
  ),
  *(
    Case(
      f"steps-per-epoch-drop-{vid}",
      call(lars_optax.steps_per_epoch, 100, 10, drop_remainder=v),
      TypeError,
      "drop_remainder must be a Python bool",
    )
    for vid, v in (("int", 1), ("None", None))
  ),
  # Scaling rules.
  *(
    Case(
      f"{rule.__name__}-{arg}-{vid}",
      call(rule, **{"base_learning_rate": 0.1, "batch_size": 4096, arg: v}),
      e,
      f"{arg} {m}",
    )
    for rule in (lars_optax.linear_scaling, lars_optax.sqrt_scaling)
    for arg in ("base_learning_rate", "batch_size", "base_batch_size")
    for vid, v, e, m in NOT_A_NUMBER[:7]
  ),
  *(
    Case(
      f"{rule.__name__}-zero-base-batch",
      call(rule, 0.1, 4096, base_batch_size=0),
      ValueError,
      "base_batch_size must be > 0",
    )
    for rule in (lars_optax.linear_scaling, lars_optax.sqrt_scaling)
  ),
  *(
    Case(f"mlperf-{vid}", call(lars_optax.mlperf_resnet50_hparams, v), e, "batch_size")
    for vid, v, e in (
      ("float", 4096.0, TypeError),
      ("None", None, TypeError),
      ("bool", True, TypeError),
      ("zero", 0, ValueError),
    )
  ),
  # Mask helpers.
  *(
    Case(f"rank-mask-layer-axes-{vid}", call(lars_optax.rank_mask, PARAMS, layer_axes=v), e, m)
    for vid, v, e, m in (
      ("float", 1.5, TypeError, "layer_axes must be None, a non-negative int"),
      ("str", "1", TypeError, "layer_axes must be None, a non-negative int"),
      ("too-many", 2, ValueError, "layer_axes at 'bias' must be in [0, 1]"),
    )
  ),
  Case(
    "mask-table-str-mask", call(lars_optax.mask_table, PARAMS, "bias"), TypeError, "exclude_names('bias')"
  ),
  Case(
    "mask-table-layer-axes",
    call(lars_optax.mask_table, PARAMS, layer_axes=0.5),
    TypeError,
    "layer_axes must be",
  ),
  Case("exclude-names-none", call(lars_optax.exclude_names), ValueError, "substrings"),
  Case("exclude-names-int", call(lars_optax.exclude_names, "bias", 3), ValueError, "substrings"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_a_clear_early_error(case):
  with pytest.raises(case.error) as info:
    case.call()
  assert case.fragment in str(info.value), str(info.value)
  # Raised by lars_optax's own checks, not by NumPy, JAX or Optax failing deeper down.
  assert "/lars_optax/" in str(info.traceback[-1].path)


def test_case_ids_are_unique_and_the_count_is_reported():
  ids = [case.id for case in CASES]
  assert len(ids) == len(set(ids))
  at_construction = sum(case.when == "construction" for case in CASES)
  print(f"{len(CASES)} bad inputs; {at_construction} rejected at construction, the rest at init")


@pytest.mark.parametrize(
  "learning_rate",
  [
    # A JAX array's value is not read at construction (no device sync; a tracer has none).
    pytest.param(jnp.asarray(-1.0), id="jax-array-value"),
    # A schedule is evaluated only at steps 0, 1, 10, ..., 10^7: a negative value between them passes.
    pytest.param(lambda count: jnp.where(count == 5, -1.0, 0.1), id="schedule-between-checked-steps"),
    # A schedule that cannot run outside jit is not evaluated at all.
    pytest.param(lambda count: jax.lax.axis_index("batch") * 0.0 - 1.0, id="schedule-needs-a-mapped-axis"),
  ],
)
def test_the_documented_limits_of_the_construction_checks(learning_rate):
  assert isinstance(lars_optax.lars(learning_rate), optax.GradientTransformationExtraArgs)
