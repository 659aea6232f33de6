"""Configs, config checks, the derived plan, optimizers, and metrics.jsonl handling (nothing compiled)."""

import importlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import input_pipeline
import lars_optax
from configs import default
from training import config_checks, loop, metrics_log, optimizers, plan, report, run_config
from training.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
DIGITS = input_pipeline.DatasetInfo("digits", 10, (8, 8, 1), 1438, 359)


def _lars_optax_names_arguments() -> bool:
  try:
    lars_optax.lars(0.1, momentum=2.0)
  except ValueError as error:
    return getattr(error, "argument", None) == "momentum"
  return False


# Fields checked by lars_optax itself reach their config field through the error's ``argument``.
needs_named_arguments = pytest.mark.skipif(
  not _lars_optax_names_arguments(), reason="lars_optax errors do not carry their argument's name"
)


def _module(name: str):
  return importlib.import_module(f"configs.{name}")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_valid_and_documents_itself(name):
  module = _module(name)
  for heading in ("Command", "Hardware", "Expected"):
    assert f"\n{heading}" in module.__doc__, f"{name} docstring lacks {heading}"
  config = module.get_config()
  info = config_checks.validate_config(config, num_devices=1) if config.dataset != "imagenet2012" else None
  assert info is None or info.num_train > 0


def test_default_config_expects_what_its_docstring_says():
  config = default.get_config()
  assert config.expected_top1 is not None and f"{config.expected_top1:g}%" in default.__doc__
  run = plan.make_plan(config, DIGITS)
  assert f"{config.expected_top1:g}% top-1" in report.start_block(config, run, "/tmp/run")


@pytest.mark.parametrize(
  ("name", "fields"),
  [
    ("alexnet_lars", ("learning_rate", "expected_top1")),
    ("alexnet_bn_lars", ("learning_rate", "expected_top1")),
    ("resnet50_lars", ("learning_rate", "warmup_epochs", "expected_top1")),
    ("alexnet_sgd", ("expected_top1",)),
    ("alexnet_bn_sgd", ("expected_top1",)),
    ("resnet50_sgd", ("expected_top1",)),
  ],
)
def test_per_batch_tables_pick_the_row_of_the_config_argument(name, fields):
  module = _module(name)
  table = getattr(module, "PAPER", None) or module.PUBLISHED
  for batch_size, row in table.items():
    config = module.get_config(str(batch_size))
    row = row if isinstance(row, tuple) else (row,)
    assert tuple(config[field] for field in fields) == row
    assert config.batch_size == batch_size


@pytest.mark.parametrize("name", ["alexnet_lars", "alexnet_bn_lars", "resnet50_lars"])
def test_an_untabulated_batch_needs_a_learning_rate(name):
  config = _module(name).get_config("2048")
  assert config.expected_top1 is None
  with pytest.raises(ConfigError, match=r"config\.learning_rate is not set"):
    config_checks._check_ranges(config)
  config.learning_rate = 20.0
  config_checks._check_ranges(config)


def test_mlperf_config_takes_the_library_table():
  for batch_size in (8192, 32768, 65536):
    config, hparams = (
      _module("resnet50_mlperf").get_config(str(batch_size)),
      lars_optax.mlperf_resnet50_hparams(batch_size),
    )
    assert (config.learning_rate, config.warmup_epochs, config.num_epochs) == (
      hparams.learning_rate,
      hparams.warmup_epochs,
      hparams.num_epochs,
    )
    assert (config.momentum, config.weight_decay, config.end_learning_rate) == (
      hparams.momentum,
      hparams.weight_decay,
      hparams.end_learning_rate,
    )
    assert (config.lr_decay_power, config.label_smoothing) == (hparams.power, hparams.label_smoothing)


@pytest.mark.parametrize(("name", "lars_mask"), [("alexnet_lars", "every_leaf"), ("alexnet_bn_lars", "rank")])
def test_lars_configs_adapt_biases_only_without_batch_norm(name, lars_mask):
  config = _module(name).get_config()
  assert config.lars_mask == lars_mask
  params = {"conv": {"kernel": np.ones((3, 3, 2, 4), np.float32), "bias": np.ones(4, np.float32)}}
  tx = optimizers.create_optimizer(config, 1.0)
  updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params), params)
  assert np.allclose(np.asarray(updates["conv"]["bias"]), -1.0) == (lars_mask == "rank")


def test_sgd_baselines_scale_the_learning_rate_linearly():
  config = _module("alexnet_sgd").get_config("4096")
  assert optimizers.peak_learning_rate(config) == pytest.approx(config.learning_rate * 4096 / 256)


def test_plan_derives_steps_evaluation_and_learning_rate():
  config = default.get_config()
  config.batch_size, config.grad_accum_steps, config.num_epochs, config.warmup_epochs = 256, 4, 3.0, 1.0
  run = plan.make_plan(config, DIGITS)
  assert run.steps_per_epoch == 1438 // 256 == 5
  assert (run.schedule_steps, run.warmup_steps, run.num_train_steps) == (15, 5, 15)
  assert (run.eval_batch_size, run.num_eval_steps) == (64, 6)  # ceil(359 / 64)
  assert run.peak_learning_rate == config.learning_rate
  assert float(run.schedule(5)) == pytest.approx(config.learning_rate)


@pytest.mark.parametrize(("eval_every_steps", "expected"), [(-1, 11), (-2, 22), (-5, 55), (0, 0), (7, 7)])
def test_plan_evaluates_every_n_epochs_for_minus_n(eval_every_steps, expected):
  config = default.get_config()
  config.eval_every_steps = eval_every_steps
  assert plan.make_plan(config, DIGITS).eval_every_steps == expected  # 1438 // 128 = 11 steps per epoch.


@pytest.mark.parametrize(
  ("num_epochs", "warmup_epochs", "steps"),
  [(2.5, 0.5, (3, 1)), (3.5, 1.5, (4, 2)), (0.5, 0.0, (1, 0))],
)
def test_plan_rounds_epochs_half_up(num_epochs, warmup_epochs, steps):
  """One step per epoch: x.5 epochs are x + 1 steps (Python's round() would give 2 for 2.5, 0 for 0.5)."""
  config = default.get_config()
  config.batch_size, config.num_epochs, config.warmup_epochs = 128, num_epochs, warmup_epochs
  run = plan.make_plan(config, input_pipeline.DatasetInfo("digits", 10, (8, 8, 1), 128, 10))
  assert (run.schedule_steps, run.warmup_steps) == steps


@pytest.mark.parametrize(
  ("num_train_steps", "schedule_steps", "warmup_steps"), [(50, 50, 10), (11, 11, 2), (500, 110, 22)]
)
def test_num_train_steps_shorter_than_the_schedule_compresses_it(
  num_train_steps, schedule_steps, warmup_steps
):
  """110 steps with 22 of warm-up by default; a shorter run ends at the end LR, a longer one stays there."""
  config = default.get_config()
  config.num_train_steps, config.end_learning_rate = num_train_steps, 0.01
  run = plan.make_plan(config, DIGITS)
  assert (run.num_train_steps, run.schedule_steps, run.warmup_steps) == (
    num_train_steps,
    schedule_steps,
    warmup_steps,
  )
  assert float(run.schedule(warmup_steps)) == pytest.approx(config.learning_rate)
  assert float(run.schedule(num_train_steps)) == pytest.approx(config.end_learning_rate)


def test_library_errors_name_the_field_by_the_argument_attribute(monkeypatch):
  def rejects(argument):
    def schedule(*args, **kwargs):
      error = ValueError("some wording that names nothing")
      if argument:
        error.argument = argument
      raise error

    return schedule

  config = default.get_config()
  for argument, field in (("power", "lr_decay_power"), ("eps", "lars_eps"), ("weight_decay", "weight_decay")):
    monkeypatch.setattr(optimizers, "create_learning_rate_schedule", rejects(argument))
    with pytest.raises(ConfigError, match=rf"^config\.{field}="):
      plan.make_plan(config, DIGITS)
  monkeypatch.setattr(optimizers, "create_learning_rate_schedule", rejects(None))
  with pytest.raises(ValueError, match="names nothing") as raised:  # a bug, not a config error
    plan.make_plan(config, DIGITS)
  assert not isinstance(raised.value, ConfigError)


# (field or model_kwargs.field, value): each must be refused at load, naming the field.
BAD_VALUES = [
  ("batch_size", 100),  # not divisible by 8 devices
  ("batch_size", 0),
  ("grad_accum_steps", 3),
  ("model", "vgg16"),
  ("optimizer", "adam"),
  ("parallelism", "pjit"),
  ("lars_mask", "every_leaves"),
  ("weight_decay_mask", "ranks"),
  ("dataset", "no_such_dataset"),
  ("momentum", 1.5),
  ("label_smoothing", 1.0),
  ("learning_rate", 1e39),
  ("weight_decay", 1e308),
  ("trust_coefficient", 1e308),
  ("num_train_steps", 3_000_000_000),
  ("num_epochs", 1e9),
  ("num_train_steps", 0),
  ("crop_padding", -1000),
  ("shuffle_buffer_size", 0),
  ("seed", -1),
  ("eval_every_steps", -3_000_000_000),
  ("eval_batch_size", 100),
  ("model_kwargs.dropout_rate", 1.5),
  ("model_kwargs.dropout_rate", 1.0),
  ("model_kwargs.dropout_rate", -0.5),
  ("model_kwargs.bn_momentum", 2.0),
  ("model_kwargs.bn_epsilon", 0.0),
]
LIBRARY_BAD_VALUES = [("num_epochs", 0.01), ("warmup_epochs", 50.0), ("lars_eps", -1.0)]
LIBRARY_BAD_VALUES += [("trust_coefficient", 0.0), ("lr_decay_power", 0.0)]


def _refused_at_load(field: str, value, tmp_path, monkeypatch, **overrides) -> str:
  def compile_attempted(*args, **kwargs):
    raise AssertionError("reached the first compilation")

  monkeypatch.setattr(loop.steps_lib, "create_train_state", compile_attempted)
  config = default.get_config()
  config.update(overrides)
  if field.startswith("model_kwargs."):
    config.model_kwargs[field.split(".")[1]] = value
  else:
    config[field] = value
  with pytest.raises(ConfigError) as raised:
    loop.train_and_evaluate(config, tmp_path / "workdir")
  assert not (tmp_path / "workdir").exists()
  assert f"config.{field}" in str(raised.value)
  return str(raised.value)


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_values_are_refused_at_load_naming_the_field(field, value, tmp_path, monkeypatch):
  _refused_at_load(field, value, tmp_path, monkeypatch)


@needs_named_arguments
@pytest.mark.parametrize(("field", "value"), LIBRARY_BAD_VALUES)
def test_values_the_library_rejects_name_their_field(field, value, tmp_path, monkeypatch):
  _refused_at_load(field, value, tmp_path, monkeypatch)


def test_resnet_filter_count_must_be_positive(tmp_path, monkeypatch):
  _refused_at_load("model_kwargs.num_filters", 0, tmp_path, monkeypatch, model="resnet20")


def test_mask_names_suggest_the_closest(tmp_path, monkeypatch):
  assert "'rank'" in _refused_at_load("weight_decay_mask", "ranks", tmp_path, monkeypatch)


def test_weight_decay_mask_is_shown_recorded_and_checked_on_resume(tmp_path):
  config = default.get_config()
  config.optimizer, config.weight_decay_mask = "sgd", "every_leaf"
  assert "every_leaf" in report.start_block(config, plan.make_plan(config, DIGITS), "/tmp/run")
  run_config.record(config, tmp_path)
  assert json.loads((tmp_path / run_config.CONFIG_FILE).read_text())["weight_decay_mask"] == "every_leaf"
  config.weight_decay_mask = None
  with pytest.raises(ConfigError, match="weight_decay_mask"):
    run_config.check(config, tmp_path, resuming=True, allow_change=False)


_PARAMS = {"kernel": jnp.array([[1.0, 2.0], [3.0, -1.0]]), "bias": jnp.array([0.5, -0.5])}
_GRADS = {"kernel": jnp.array([[0.1, -0.2], [0.0, 0.3]]), "bias": jnp.array([0.2, 0.1])}


def _first_update(config, gamma: float) -> dict:
  tx = optimizers.create_optimizer(config, lambda count: gamma)
  updates, _ = tx.update(_GRADS, tx.init(_PARAMS), _PARAMS)
  return updates


def test_sgd_decays_the_leaves_weight_decay_mask_names():
  config = default.get_config()
  config.optimizer, config.weight_decay, config.weight_decay_mask = "sgd", 0.01, "every_leaf"
  expected = jax.tree.map(lambda g, w: -2.0 * (g + 0.01 * w), _GRADS, _PARAMS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), _first_update(config, 2.0), expected)


@pytest.mark.skipif(
  "weight_decay_mask" not in lars_optax.lars.__code__.co_varnames,
  reason="lars_optax.lars has no weight_decay_mask",
)
def test_lars_adapts_without_decaying_where_weight_decay_mask_excludes():
  """lars_mask every_leaf, weight_decay_mask rank: the bias gets a trust ratio with β = 0 (Algorithm 1)."""
  config = default.get_config()
  config.weight_decay, config.lars_mask, config.weight_decay_mask = 0.01, "every_leaf", "rank"
  eta, w, g = config.trust_coefficient, np.asarray(_PARAMS["bias"]), np.asarray(_GRADS["bias"])
  expected = -2.0 * eta * np.linalg.norm(w) / np.linalg.norm(g) * g
  np.testing.assert_allclose(_first_update(config, 2.0)["bias"], expected, rtol=1e-5)


def test_lars_and_sgd_first_updates_match_the_formulas():
  """Weight decay only in the optimizer and only on rank ≥ 2 leaves; λ as in Algorithm 1."""
  config = default.get_config()
  config.weight_decay, config.momentum = 0.01, 0.9
  params = {"kernel": jnp.array([[1.0, 2.0], [3.0, -1.0]]), "bias": jnp.array([0.5, -0.5])}
  grads = {"kernel": jnp.array([[0.1, -0.2], [0.0, 0.3]]), "bias": jnp.array([0.2, 0.1])}
  gamma, eta, beta = 2.0, config.trust_coefficient, config.weight_decay
  w, g = np.asarray(params["kernel"]), np.asarray(grads["kernel"])
  lam = eta * np.linalg.norm(w) / (np.linalg.norm(g) + beta * np.linalg.norm(w))
  expected = {
    "lars": {"kernel": -gamma * lam * (g + beta * w), "bias": -gamma * np.asarray(grads["bias"])},
    "sgd": {"kernel": -gamma * (g + beta * w), "bias": -gamma * np.asarray(grads["bias"])},
  }
  for name, updates in expected.items():
    config.optimizer = name
    tx = optimizers.create_optimizer(config, lambda count: gamma)
    actual, _ = tx.update(grads, tx.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), actual, updates)


def _two_steps(tx: optax.GradientTransformation, params: dict, grads: dict) -> list[dict]:
  state, updates = tx.init(params), []
  for scale in (1.0, -0.5):  # a second, different gradient exercises the momentum buffer.
    update, state = tx.update(jax.tree.map(lambda g, s=scale: s * g, grads), state, params)
    updates.append(update)
    params = optax.apply_updates(params, update)
  return updates


@pytest.mark.parametrize(
  ("name", "reference"),
  [
    (
      # LARC: λ clipped at the global rate; η = 0.5 makes the clip bind on the kernel.
      "larc",
      lambda c, lr: lars_optax.lars(
        lr,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        trust_coefficient=c.trust_coefficient,
        eps=c.lars_eps,
        nesterov=c.nesterov,
        trust_clip=True,
      ),
    ),
    (
      # optax.lars with the rank mask spelled out: only the kernel gets weight decay and a trust ratio.
      "optax_lars",
      lambda c, lr: optax.lars(
        lr,
        weight_decay=c.weight_decay,
        weight_decay_mask={"kernel": True, "bias": False},
        trust_coefficient=c.trust_coefficient,
        eps=c.lars_eps,
        trust_ratio_mask={"kernel": True, "bias": False},
        momentum=c.momentum,
        nesterov=c.nesterov,
      ),
    ),
  ],
)
def test_larc_and_optax_lars_factories_equal_the_library_calls(name, reference):
  config = default.get_config()
  config.optimizer, config.trust_coefficient, config.weight_decay, config.lars_eps = name, 0.5, 0.01, 1e-3
  learning_rate = 0.3
  actual = _two_steps(optimizers.create_optimizer(config, lambda count: learning_rate), _PARAMS, _GRADS)
  expected = _two_steps(reference(config, learning_rate), _PARAMS, _GRADS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), actual, expected)
  if name == "larc":  # the clip binds: plain LARS would differ.
    config.optimizer = "lars"
    unclipped = _two_steps(optimizers.create_optimizer(config, lambda count: learning_rate), _PARAMS, _GRADS)
    assert not np.allclose(unclipped[0]["kernel"], actual[0]["kernel"])


def test_metrics_log_truncates_to_the_restored_step_and_drops_a_torn_line(tmp_path):
  path = tmp_path / metrics_log.METRICS_FILE
  lines = [json.dumps({"step": step, "train/loss": 1.0 / step}) for step in range(1, 6)]
  path.write_text("\n".join(lines) + '\n{"step": 6, "train/lo')  # killed mid-write
  assert [r["step"] for r in metrics_log.read_metrics(path)] == [1, 2, 3, 4, 5]
  assert metrics_log.truncate_metrics(path, 3) == 3
  assert [r["step"] for r in metrics_log.read_metrics(path)] == [1, 2, 3]
  assert path.read_text().endswith("\n")
  assert metrics_log.truncate_metrics(tmp_path / "absent.jsonl", 0) == 0


def _schedule(num_train_steps: int) -> dict[str, int]:
  config = default.get_config()
  config.num_train_steps = num_train_steps
  run = plan.make_plan(config, config_checks.validate_config(config, num_devices=1))
  return {"total_steps": run.schedule_steps, "warmup_steps": run.warmup_steps}


def test_a_num_train_steps_that_compresses_the_schedule_differently_is_a_trajectory_change(tmp_path):
  config = default.get_config()  # 110 steps of schedule; a shorter run compresses it.
  run_config.record(config, tmp_path, _schedule(-1))
  longer = default.get_config()
  longer.num_train_steps = 300  # Continues at the end LR: the first 110 steps are unchanged.
  run_config.check(longer, tmp_path, resuming=True, allow_change=False, schedule=_schedule(300))
  shorter = default.get_config()
  shorter.num_train_steps = 50
  with pytest.raises(ConfigError, match=r"schedule\.total_steps: 110 → 50"):
    run_config.check(shorter, tmp_path, resuming=True, allow_change=False, schedule=_schedule(50))
