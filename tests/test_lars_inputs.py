"""Bad inputs: each is refused early, with a ValueError/TypeError whose ``argument`` names the parameter.

``argument`` is the contract a program relies on to map a failure to its own setting without parsing the
message, so every case checks it, and the message names the argument too.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_optax

FLOAT32_OVERFLOW = 1e39  # finite in float64, inf in float32.

CONSTRUCTION_CASES = [
  # (callable, error, argument)
  (lambda: lars_optax.lars(-0.1), ValueError, "learning_rate"),
  (lambda: lars_optax.lars(FLOAT32_OVERFLOW), ValueError, "learning_rate"),
  (lambda: lars_optax.lars("0.1"), TypeError, "learning_rate"),
  (lambda: lars_optax.lars(0.1, weight_decay=1e308), ValueError, "weight_decay"),
  (lambda: lars_optax.lars(0.1, weight_decay=-1.0), ValueError, "weight_decay"),
  (lambda: lars_optax.lars(0.1, trust_coefficient=1e308), ValueError, "trust_coefficient"),
  (lambda: lars_optax.lars(0.1, trust_coefficient=0.0), ValueError, "trust_coefficient"),
  (lambda: lars_optax.lars(0.1, eps=-1e-9), ValueError, "eps"),
  (lambda: lars_optax.lars(0.1, eps=None), TypeError, "eps"),
  (lambda: lars_optax.lars(0.1, momentum=1.0), ValueError, "momentum"),
  (lambda: lars_optax.lars(0.1, momentum=True), TypeError, "momentum"),
  (lambda: lars_optax.lars(0.1, nesterov=1), TypeError, "nesterov"),
  (lambda: lars_optax.lars(0.1, excluded_lr_scale=-1.0), ValueError, "excluded_lr_scale"),
  (lambda: lars_optax.lars(0.1, learning_rate_placement="middle"), ValueError, "learning_rate_placement"),
  (lambda: lars_optax.lars(0.1, trust_ratio_norm="adam"), ValueError, "trust_ratio_norm"),
  (lambda: lars_optax.lars(0.1, accumulator_dtype="int32"), ValueError, "accumulator_dtype"),
  (lambda: lars_optax.lars(0.1, mask="bias"), TypeError, "mask"),
  (lambda: lars_optax.lars(0.1, layer_axes=-1), ValueError, "layer_axes"),
  (lambda: lars_optax.lars(0.1, axis_name=3), TypeError, "axis_name"),
  (lambda: lars_optax.lars(lambda count: -1.0 * count), ValueError, "learning_rate"),
  (lambda: lars_optax.scale_by_trust_ratio(learning_rate=0.1), ValueError, "learning_rate"),
  (lambda: lars_optax.scale_by_trust_ratio(trust_clip=True), ValueError, "learning_rate"),
  (lambda: lars_optax.scale_by_trust_ratio(weight_decay=math.inf), ValueError, "weight_decay"),
  (lambda: lars_optax.warmup_polynomial_decay(1.0, total_steps=2**31 + 10), ValueError, "total_steps"),
  (lambda: lars_optax.warmup_polynomial_decay(1.0, total_steps=0), ValueError, "total_steps"),
  (lambda: lars_optax.warmup_polynomial_decay(1.0, total_steps=10.0), TypeError, "total_steps"),
  (
    lambda: lars_optax.warmup_polynomial_decay(1.0, total_steps=10, warmup_steps=11),
    ValueError,
    "warmup_steps",
  ),
  (
    lambda: lars_optax.warmup_polynomial_decay(1.0, total_steps=10, warmup_steps=True),
    TypeError,
    "warmup_steps",
  ),
  (lambda: lars_optax.warmup_polynomial_decay(FLOAT32_OVERFLOW, total_steps=10), ValueError, "peak_value"),
  (lambda: lars_optax.epochs_to_steps(1e300, 1.0), ValueError, "epochs"),
  (lambda: lars_optax.epochs_to_steps(1e9, 5.0, name="num_epochs"), ValueError, "num_epochs"),
  (
    lambda: lars_optax.warmup_polynomial_decay_from_epochs(
      1.0, num_epochs=1e9, warmup_epochs=1, steps_per_epoch=10
    ),
    ValueError,
    "num_epochs",
  ),
  (lambda: lars_optax.steps_per_epoch(100, 0), ValueError, "batch_size"),
  (lambda: lars_optax.mlperf_resnet50_hparams(False), TypeError, "batch_size"),
  (lambda: lars_optax.linear_scaling(0.1, -8), ValueError, "batch_size"),
]


@pytest.mark.parametrize(("make", "error", "argument"), CONSTRUCTION_CASES)
def test_bad_argument_is_refused_at_construction_naming_it(make, error, argument):
  with pytest.raises(error) as info:
    make()
  assert info.value.argument == argument
  assert argument in str(info.value)


def test_schedule_that_raises_is_refused_with_its_error_as_cause():
  def schedule(count):
    raise ZeroDivisionError("boom")

  with pytest.raises(ValueError, match=r"learning_rate .*ZeroDivisionError.*step 0") as info:
    lars_optax.lars(schedule)
  assert info.value.argument == "learning_rate"
  assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_schedule_with_a_typo_is_refused_but_one_needing_a_mapped_axis_is_left_to_the_update():
  with pytest.raises(ValueError, match="NameError") as info:
    lars_optax.lars(lambda count: undefined_rate * count)  # noqa: F821
  assert info.value.argument == "learning_rate"
  assert lars_optax.lars(lambda count: jax.lax.axis_index("batch") * 0.0 + 0.1) is not None


def test_schedule_that_overflows_float32_is_refused():
  with pytest.raises(ValueError, match="learning_rate") as info:
    lars_optax.lars(lambda count: 1e39 * (count + 1.0))
  assert info.value.argument == "learning_rate"


def test_int32_limit_itself_is_accepted():
  schedule = lars_optax.warmup_polynomial_decay(1.0, total_steps=2**31 - 1)
  assert float(schedule(0)) == 1.0
  assert lars_optax.epochs_to_steps(2**31 - 1, 1) == 2**31 - 1


@pytest.mark.parametrize(
  "make_opt",
  [lambda: lars_optax.lars(0.1), lambda: lars_optax.scale_by_trust_ratio(weight_decay=1e-4)],
  ids=["lars", "scale_by_trust_ratio"],
)
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
def test_non_floating_gradient_raises_type_error_naming_the_leaf(make_opt, dtype):
  params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
  grads = {"dense": {"kernel": jnp.ones((2, 3), dtype), "bias": jnp.zeros(3)}}
  opt = make_opt()
  state = opt.init(params)
  for update in (opt.update, jax.jit(opt.update)):
    with pytest.raises(TypeError, match="updates at 'dense/kernel' must be floating point") as info:
      update(grads, state, params)
    assert info.value.argument == "updates"


def test_non_floating_parameters_raise_type_error_at_init_naming_the_leaf():
  with pytest.raises(TypeError, match="params at 'step' must be floating point") as info:
    lars_optax.lars(0.1).init({"kernel": jnp.ones((2, 2)), "step": jnp.zeros((), jnp.int32)})
  assert info.value.argument == "params"


def test_update_without_params_names_params():
  opt = lars_optax.lars(0.1)
  params = {"kernel": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="params") as info:
    opt.update(params, opt.init(params))
  assert info.value.argument == "params"


def test_get_diagnostics_without_lars_names_opt_state():
  with pytest.raises(ValueError, match="opt_state") as info:
    lars_optax.get_diagnostics(optax.sgd(0.1).init({"kernel": np.ones(2)}))
  assert info.value.argument == "opt_state"
