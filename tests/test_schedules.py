"""Tests for lars_optax._schedules against hand-computed values and plain-Python closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


def _closed_form(t, *, peak, total, warmup, init=0.0, end=0.0, power=2.0):
  """The documented piecewise formula, in plain Python."""
  if t < warmup:
    return init + (peak - init) * t / warmup
  if t < total:
    return end + (peak - end) * (1 - (t - warmup) / (total - warmup)) ** power
  return end


def _jit_values(schedule, steps):
  """Evaluates `schedule` under jit at traced int32 counts."""
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps, dtype=jnp.int32)))


# kwargs, {step: hand-computed value} at step 0, mid warm-up, end of warm-up, mid decay, last step
# and past the end.
_CASES = {
  "paper_poly2": (
    dict(peak_value=2.0, total_steps=10, warmup_steps=4),
    {0: 0.0, 2: 1.0, 4: 2.0, 7: 0.5, 9: 2.0 / 36, 10: 0.0, 15: 0.0},
  ),
  "init_end_linear": (
    dict(peak_value=1.0, total_steps=8, warmup_steps=2, init_value=0.2, end_value=0.1, power=1.0),
    {0: 0.2, 1: 0.6, 2: 1.0, 5: 0.55, 7: 0.25, 8: 0.1, 100: 0.1},
  ),
  "no_warmup": (
    dict(peak_value=3.0, total_steps=4, power=2.0),
    {0: 3.0, 1: 1.6875, 2: 0.75, 3: 0.1875, 4: 0.0, 9: 0.0},
  ),
  "warmup_only": (
    dict(peak_value=1.0, total_steps=4, warmup_steps=4, end_value=0.5),
    {0: 0.0, 2: 0.5, 3: 0.75, 4: 0.5, 6: 0.5},
  ),
  "mlperf_form": (
    dict(peak_value=29.0, total_steps=100, warmup_steps=20, end_value=1e-4, power=2.0),
    {0: 0.0, 10: 14.5, 20: 29.0, 60: 1e-4 + (29.0 - 1e-4) * 0.25, 99: 1e-4 + (29.0 - 1e-4) / 6400},
  ),
  "from_first_step": (
    dict(peak_value=2.0, total_steps=10, warmup_steps=4, warmup_from_first_step=True),
    {0: 0.5, 1: 1.0, 3: 2.0, 6: 0.5, 9: 0.0, 12: 0.0},
  ),
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_warmup_polynomial_decay_hand_values(name):
  kwargs, expected = _CASES[name]
  schedule = warmup_polynomial_decay(**kwargs)
  steps = sorted(expected)
  want = [expected[t] for t in steps]
  np.testing.assert_allclose([float(schedule(t)) for t in steps], want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(_jit_values(schedule, steps), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["paper_poly2", "init_end_linear", "no_warmup", "mlperf_form"])
def test_warmup_polynomial_decay_matches_closed_form_everywhere(name):
  kwargs, _ = _CASES[name]
  kwargs = dict(kwargs)
  total, warmup = kwargs.pop("total_steps"), kwargs.pop("warmup_steps", 0)
  closed = dict(
    peak=kwargs.pop("peak_value"),
    init=kwargs.get("init_value", 0.0),
    end=kwargs.get("end_value", 0.0),
    power=kwargs.get("power", 2.0),
  )
  steps = np.arange(total + 3)
  want = [_closed_form(int(t), total=total, warmup=warmup, **closed) for t in steps]
  schedule = warmup_polynomial_decay(closed["peak"], total_steps=total, warmup_steps=warmup, **kwargs)
  np.testing.assert_allclose(_jit_values(schedule, steps), want, rtol=1e-5, atol=1e-6)


def test_from_first_step_is_the_schedule_shifted_by_one():
  base = warmup_polynomial_decay(2.0, total_steps=10, warmup_steps=4)
  shifted = warmup_polynomial_decay(2.0, total_steps=10, warmup_steps=4, warmup_from_first_step=True)
  steps = np.arange(12)
  np.testing.assert_array_equal(_jit_values(shifted, steps), _jit_values(base, steps + 1))


@pytest.mark.parametrize(
  ("warmup_from_first_step", "first_lr", "second_lr"), [(False, 0.0, 0.5), (True, 0.5, 1.0)]
)
def test_first_sgd_update_uses_the_documented_learning_rate(warmup_from_first_step, first_lr, second_lr):
  schedule = warmup_polynomial_decay(
    2.0, total_steps=10, warmup_steps=4, warmup_from_first_step=warmup_from_first_step
  )
  opt = optax.sgd(learning_rate=schedule)
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([1.0, 3.0])}
  state = opt.init(params)
  update = jax.jit(opt.update)
  for lr in (first_lr, second_lr):
    updates, state = update(grads, state, params)
    np.testing.assert_allclose(updates["w"], -lr * np.array([1.0, 3.0]), rtol=1e-6)


def test_array_values_are_accepted_unvalidated():
  schedule = warmup_polynomial_decay(jnp.asarray(2.0), total_steps=10, warmup_steps=4)
  np.testing.assert_allclose(_jit_values(schedule, [2, 7]), [1.0, 0.5], rtol=1e-6)


@pytest.mark.parametrize(
  ("kwargs", "argument"),
  [
    (dict(total_steps=0), "total_steps"),
    (dict(total_steps=-5), "total_steps"),
    (dict(total_steps=10, warmup_steps=-1), "warmup_steps"),
    (dict(total_steps=10, warmup_steps=11), "warmup_steps"),
    (dict(total_steps=10, power=0.0), "power"),
    (dict(total_steps=10, init_value=-0.1), "init_value"),
    (dict(total_steps=10, end_value=-1e-4), "end_value"),
    (dict(total_steps=10, peak_value=-1.0), "peak_value"),
  ],
)
def test_warmup_polynomial_decay_rejects_bad_arguments(kwargs, argument):
  kwargs = {"peak_value": 1.0, **kwargs}
  with pytest.raises(ValueError, match=rf"^{argument}\b"):
    warmup_polynomial_decay(**kwargs)


@pytest.mark.parametrize(
  ("argument", "value"),
  [("total_steps", 10.0), ("warmup_steps", 2.5), ("warmup_from_first_step", 1)],
)
def test_warmup_polynomial_decay_rejects_wrong_types(argument, value):
  kwargs = {"total_steps": 10, "warmup_steps": 2, argument: value}
  with pytest.raises(TypeError, match=rf"^{argument}\b"):
    warmup_polynomial_decay(1.0, **kwargs)


@pytest.mark.parametrize(
  ("epochs", "steps_per_epoch_", "steps"),
  [
    (2.0, 3, 6),
    (2.5, 3, 8),  # 7.5: halves go up (Python's round() would give 8 here too)
    (0.5, 5, 3),  # 2.5: halves go up (Python's round() would give 2)
    (0.2, 3, 1),  # 0.6 -> 1
    (0.1, 3, 0),  # 0.3 -> 0
    (18, 1281167 / 32768, 704),  # 703.77, MLPerf at batch 32K with fractional steps per epoch
    (64, 1281167 / 32768, 2502),  # 2502.28
  ],
)
def test_epochs_round_to_nearest_step(epochs, steps_per_epoch_, steps):
  assert epochs_to_steps(epochs, steps_per_epoch_) == steps


def test_warmup_polynomial_decay_from_epochs_values():
  # num_epochs=2.5, warmup_epochs=0.5, 3 steps per epoch -> T = round(7.5) = 8, W = round(1.5) = 2.
  schedule = warmup_polynomial_decay_from_epochs(
    1.0, num_epochs=2.5, warmup_epochs=0.5, steps_per_epoch=3, end_value=0.01
  )
  expected = {0: 0.0, 1: 0.5, 2: 1.0, 5: 0.01 + 0.99 * 0.25, 7: 0.01 + 0.99 / 36, 8: 0.01, 20: 0.01}
  steps = sorted(expected)
  np.testing.assert_allclose(_jit_values(schedule, steps), [expected[t] for t in steps], rtol=1e-6)


@pytest.mark.parametrize(
  ("kwargs", "argument"),
  [
    (dict(steps_per_epoch=0), "steps_per_epoch"),
    (dict(num_epochs=-1.0), "num_epochs"),
    (dict(num_epochs=0.1, warmup_epochs=0.0), "num_epochs"),  # 0.3 steps rounds to 0
    (dict(warmup_epochs=-0.5), "warmup_epochs"),
    (dict(num_epochs=2.0, warmup_epochs=2.1), "warmup_epochs"),
  ],
)
def test_warmup_polynomial_decay_from_epochs_rejects_bad_arguments(kwargs, argument):
  kwargs = {"num_epochs": 2.0, "warmup_epochs": 1.0, "steps_per_epoch": 3, **kwargs}
  with pytest.raises(ValueError, match=rf"^{argument}\b"):
    warmup_polynomial_decay_from_epochs(1.0, **kwargs)


@pytest.mark.parametrize(
  ("num_examples", "batch_size", "drop_remainder", "steps"),
  [
    (1281167, 32768, True, 39),
    (1281167, 32768, False, 40),
    (100, 10, True, 10),
    (100, 10, False, 10),
    (10, 3, True, 3),
    (10, 3, False, 4),
    (2, 3, False, 1),
  ],
)
def test_steps_per_epoch(num_examples, batch_size, drop_remainder, steps):
  assert steps_per_epoch(num_examples, batch_size, drop_remainder=drop_remainder) == steps


@pytest.mark.parametrize(
  ("args", "error", "argument"),
  [
    ((100, 0), ValueError, "batch_size"),
    ((0, 10), ValueError, "num_examples"),
    ((2, 3), ValueError, "num_examples"),  # no full batch when the remainder is dropped
    ((100.0, 10), TypeError, "num_examples"),
    ((100, 2.5), TypeError, "batch_size"),
  ],
)
def test_steps_per_epoch_rejects_bad_arguments(args, error, argument):
  with pytest.raises(error, match=rf"^{argument}\b"):
    steps_per_epoch(*args)


@pytest.mark.parametrize(
  ("rule", "base_lr", "batch_size", "base_batch_size", "expected"),
  [
    (linear_scaling, 0.1, 8192, 256, 3.2),
    (linear_scaling, 0.1, 256, 256, 0.1),
    (linear_scaling, 0.02, 512, 128, 0.08),
    (sqrt_scaling, 0.1, 1024, 256, 0.2),
    (sqrt_scaling, 1.0, 64, 256, 0.5),
    (sqrt_scaling, 0.01, 512, 128, 0.02),
  ],
)
def test_scaling_rules(rule, base_lr, batch_size, base_batch_size, expected):
  got = rule(base_lr, batch_size, base_batch_size=base_batch_size)
  assert math.isclose(got, expected, rel_tol=1e-12)


@pytest.mark.parametrize("rule", [linear_scaling, sqrt_scaling])
@pytest.mark.parametrize(
  ("args", "kwargs", "argument"),
  [
    ((-0.1, 512), {}, "base_learning_rate"),
    ((0.1, 0), {}, "batch_size"),
    ((0.1, 512), {"base_batch_size": 0}, "base_batch_size"),
  ],
)
def test_scaling_rules_reject_bad_arguments(rule, args, kwargs, argument):
  with pytest.raises(ValueError, match=rf"^{argument}\b"):
    rule(*args, **kwargs)


# batch size -> (γ0, warm-up epochs, momentum, weight decay, epochs), rounded as in the table of
# mlperf_resnet50_hparams's docstring (MLPerf Training v0.7, Google's JAX ResNet-50 submission).
_MLPERF_ROWS = {
  1024: (10.0, 5, 0.9, 2e-4, 56),
  8192: (10.0, 5, 0.9, 2e-4, 56),
  16383: (10.0, 5, 0.9, 2e-4, 56),
  16384: (25.0, 5, 0.9, 2e-4, 56),
  32767: (25.0, 5, 0.9, 2e-4, 56),
  32768: (29.0, 18, 0.929, 1e-4, 64),
  65535: (29.0, 18, 0.929, 1e-4, 64),
  65536: (23.08, 33, 0.954, 1e-4, 92),
  131072: (23.08, 33, 0.954, 1e-4, 92),
}


@pytest.mark.parametrize("batch_size", sorted(_MLPERF_ROWS))
def test_mlperf_resnet50_hparams_rows(batch_size):
  hparams = mlperf_resnet50_hparams(batch_size)
  assert isinstance(hparams, MLPerfHparams)
  got = (hparams.learning_rate, hparams.warmup_epochs, hparams.momentum)
  np.testing.assert_allclose(got, _MLPERF_ROWS[batch_size][:3], rtol=1e-3)
  assert (hparams.weight_decay, hparams.num_epochs) == _MLPERF_ROWS[batch_size][3:]
  assert (hparams.end_learning_rate, hparams.power, hparams.label_smoothing) == (1e-4, 2.0, 0.1)


def test_mlperf_learning_rate_schedule_at_32k():
  # ImageNet at batch 32,768: S = 1281167 / 32768, W = round(18 S) = 704, T = round(64 S) = 2502.
  schedule = mlperf_resnet50_hparams(32768).learning_rate_schedule(1281167 / 32768)
  steps = [0, 352, 704, 1603, 2502, 3000]
  want = [0.0, 14.5, 29.0, 1e-4 + (29.0 - 1e-4) * 0.25, 1e-4, 1e-4]
  np.testing.assert_allclose(_jit_values(schedule, steps), want, rtol=1e-5)


@pytest.mark.parametrize("batch_size", [0, -256])
def test_mlperf_resnet50_hparams_rejects_non_positive_batch(batch_size):
  with pytest.raises(ValueError, match=r"^batch_size\b"):
    mlperf_resnet50_hparams(batch_size)
