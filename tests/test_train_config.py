"""Configs, recipes, the derived plan, optimizers, and metrics.jsonl handling (nothing compiled)."""

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
import models
from configs import default
from training import config_checks, loop, metrics_log, optimizers, plan, recipes, report
from training.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
RECIPE_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def _load(name: str, *args: str):
  return importlib.import_module(f"configs.{name}").get_config(*args)


@pytest.mark.parametrize("name", RECIPE_CONFIGS)
def test_every_config_loads_resolves_and_documents_itself(name):
  module = importlib.import_module(f"configs.{name}")
  for heading in ("Command", "Hardware", "Time", "Expected"):
    assert f"\n{heading}" in module.__doc__, f"{name} docstring lacks {heading}"
  config, _ = recipes.apply_recipe(module.get_config())
  assert config.model in models.MODELS
  assert config.optimizer in optimizers.OPTIMIZERS
  for field in ("learning_rate", "warmup_epochs", "num_epochs", "momentum", "weight_decay"):
    assert config[field] is not None, f"{name}: {field} unresolved"


@pytest.mark.parametrize(
  ("name", "batch_size", "learning_rate", "warmup_epochs", "top1"),
  [
    ("alexnet_lars", "512", 2, 2, 58.7),
    ("alexnet_lars", "32768", 14, 2, 46.9),
    ("alexnet_bn_lars", "8192", 14, 5, 60.1),
    ("alexnet_bn_lars", "16384", 23, 5, 59.3),
    ("resnet50_lars", "1024", 9, 5, 73.3),
    ("resnet50_lars", "32768", 40, 12, 72.5),
  ],
)
def test_paper_recipes_take_gamma0_and_warmup_from_the_table(
  name, batch_size, learning_rate, warmup_epochs, top1
):
  """The paper's tables (README "Training"), by config string and by --config.batch_size override alike."""
  by_string, recipe = recipes.apply_recipe(_load(name, batch_size))
  overridden = _load(name)
  overridden.batch_size = int(batch_size)
  by_field, _ = recipes.apply_recipe(overridden)
  for config in (by_string, by_field):
    assert config.learning_rate == learning_rate
    assert config.warmup_epochs == warmup_epochs
    assert config.weight_decay == 5e-4 and config.momentum == 0.9 and config.num_epochs == 100
  assert recipe.expected_top1 == top1


@pytest.mark.parametrize(
  ("name", "lars_mask"),
  [("alexnet_lars", "every_leaf"), ("alexnet_bn_lars", "rank"), ("resnet50_lars", "rank")],
)
def test_lars_recipes_adapt_biases_only_without_batch_norm(name, lars_mask):
  """No BN: biases need their own trust ratio at γ_0 ≈ 10; with BN, MLPerf's exclusion is kept."""
  config, _ = recipes.apply_recipe(_load(name))
  assert config.lars_mask == lars_mask
  params = {"conv": {"kernel": np.ones((3, 3, 2, 4), np.float32), "bias": np.ones(4, np.float32)}}
  state = optimizers.create_optimizer(config, 1.0).init(params)
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = optimizers.create_optimizer(config, 1.0).update(grads, state, params)
  plain_sgd = np.allclose(np.asarray(updates["conv"]["bias"]), -1.0)
  assert plain_sgd == (lars_mask == "rank")


def test_lars_mask_must_be_a_known_name():
  config, _ = recipes.apply_recipe(_load("default"))
  config.lars_mask = "every_leaves"
  with pytest.raises(
    ConfigError, match=r"config.lars_mask must be one of \['every_leaf', 'rank'\].*every_leaf"
  ):
    config_checks.validate_config(config, num_devices=1)


def test_paper_recipe_refuses_an_untabulated_batch_unless_given_a_learning_rate():
  config = _load("resnet50_lars", "4096")
  with pytest.raises(ValueError, match=r"tabulates γ_0 only for batch_size in \[256, 1024"):
    recipes.apply_recipe(config)
  config.learning_rate = 20.0
  resolved, recipe = recipes.apply_recipe(config)
  assert resolved.learning_rate == 20.0 and resolved.warmup_epochs == 5
  assert recipe.expected_top1 is None


def test_explicit_values_win_over_the_recipe():
  config = _load("alexnet_bn_lars", "8192")
  config.learning_rate = 12.0
  resolved, _ = recipes.apply_recipe(config)
  assert resolved.learning_rate == 12.0 and resolved.warmup_epochs == 5


def test_mlperf_recipe_follows_lars_notes_section_3():
  config, recipe = recipes.apply_recipe(_load("resnet50_mlperf", "32768"))
  assert (config.learning_rate, config.warmup_epochs, config.momentum) == (29, 18, 0.929)
  assert (config.weight_decay, config.num_epochs, config.end_learning_rate) == (1e-4, 64, 1e-4)
  assert (config.label_smoothing, config.lr_decay_power) == (0.1, 2.0)
  assert recipe.expected_top1 == 75.9
  small, _ = recipes.apply_recipe(_load("resnet50_mlperf", "8192"))
  assert (small.learning_rate, small.warmup_epochs) == (10, 5)


def test_sgd_baselines_scale_the_learning_rate_linearly():
  config, recipe = recipes.apply_recipe(_load("alexnet_sgd", "4096"))
  assert optimizers.peak_learning_rate(config) == pytest.approx(0.01 * 4096 / 256)
  assert recipe.expected_top1 == 53.1
  config, recipe = recipes.apply_recipe(_load("resnet50_sgd", "32768"))
  assert optimizers.peak_learning_rate(config) == pytest.approx(0.1 * 128)
  assert recipe.expected_top1 == 71.7


def test_plan_derives_batches_steps_and_learning_rate():
  config = default.get_config()
  config.batch_size, config.grad_accum_steps, config.num_epochs, config.warmup_epochs = 256, 4, 3.0, 1.0
  info = input_pipeline.DatasetInfo("digits", 10, (8, 8, 1), 1438, 359)
  run = plan.make_plan(config, info, None, num_devices=8, num_processes=2)
  assert run.steps_per_epoch == 1438 // 256 == 5
  assert (run.schedule_steps, run.warmup_steps, run.num_train_steps) == (15, 5, 15)
  assert run.per_device_micro_batch == 256 // (8 * 4)
  assert (run.eval_batch_size, run.num_eval_steps) == (64, 6)  # ceil(359 / 64)
  assert run.eval_every_steps == 5 and run.peak_learning_rate == config.learning_rate
  start = report.start_block(config, run, "/tmp/run")
  assert "8 devices x 4 micro-batches x 8 per device" in start and "workdir:       /tmp/run" in start
  assert "lars, momentum 0.9, weight decay 0.0005, rank mask" in start
  config.optimizer = "sgd"
  assert "sgd, momentum 0.9, weight decay 0.0005\n" in report.start_block(config, run, "/tmp/run")


@pytest.mark.parametrize(
  ("num_epochs", "warmup_epochs", "steps"),
  [(2.5, 0.5, (3, 1)), (3.5, 1.5, (4, 2)), (0.5, 0.0, (1, 0))],
)
def test_plan_rounds_epochs_half_up(num_epochs, warmup_epochs, steps):
  """One step per epoch: x.5 epochs are x + 1 steps (Python's round() would give 2 for 2.5, 0 for 0.5)."""
  config = default.get_config()
  config.batch_size, config.num_epochs, config.warmup_epochs = 128, num_epochs, warmup_epochs
  info = input_pipeline.DatasetInfo("digits", 10, (8, 8, 1), 128, 10)
  run = plan.make_plan(config, info, None, num_devices=1, num_processes=1)
  assert (run.schedule_steps, run.warmup_steps) == steps


def test_plan_refuses_a_schedule_of_no_step():
  config = default.get_config()
  config.batch_size, config.num_epochs, config.warmup_epochs = 128, 0.4, 0.0
  info = input_pipeline.DatasetInfo("digits", 10, (8, 8, 1), 128, 10)
  with pytest.raises(ConfigError, match=r"config.num_epochs=0.4 gives no step"):
    plan.make_plan(config, info, None, num_devices=1, num_processes=1)


@pytest.mark.parametrize(
  ("overrides", "message"),
  [
    ({"batch_size": 100}, r"batch_size=100 must be divisible by the device count times"),
    ({"grad_accum_steps": 3}, r"\(8 x 3 = 24\)"),
    ({"model": "vgg16"}, r"config.model must be one of \["),
    ({"optimizer": "adam"}, r"config.optimizer must be one of \['larc', 'lars', 'optax_lars', 'sgd'\]"),
    ({"parallelism": "pjit"}, r"config.parallelism must be one of \['jit', 'pmap'\]"),
    ({"dataset": "no_such_dataset"}, r"no_such_dataset"),
    ({"momentum": 1.5}, r"config.momentum=1.5: momentum must be in \[0, 1\)"),
    ({"lars_eps": -1.0}, r"config.lars_eps=-1.0: eps must be"),
    ({"trust_coefficient": 0.0}, r"config.trust_coefficient=0.0: trust_coefficient must be"),
    ({"lr_decay_power": 0.0}, r"config.lr_decay_power=0.0: power must be"),
    ({"eval_batch_size": 100}, r"eval_batch_size=100 must be divisible by the device count \(8\)"),
    ({"warmup_epochs": 50.0}, r"config.warmup_epochs=50.0: warmup_steps must be <= total_steps"),
    ({"num_epochs": 0.01}, r"config.num_epochs=0.01 gives no step"),
    ({"recipe": "resnet50_lars"}, r"the paper tabulates γ_0 only"),
  ],
)
def test_invalid_configs_fail_before_anything_compiles(overrides, message, tmp_path, monkeypatch):
  def compile_attempted(*args, **kwargs):
    raise AssertionError("reached the first compilation")

  monkeypatch.setattr(loop.steps_lib, "create_train_state", compile_attempted)
  config = default.get_config()
  config.update(overrides)
  if overrides.get("recipe"):
    config.learning_rate = None
    config.batch_size = 128
  with pytest.raises(ConfigError, match=message):
    loop.train_and_evaluate(config, tmp_path / "workdir")
  assert not (tmp_path / "workdir").exists()


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


_PARAMS = {"kernel": jnp.array([[1.0, 2.0], [3.0, -1.0]]), "bias": jnp.array([0.5, -0.5])}
_GRADS = {"kernel": jnp.array([[0.1, -0.2], [0.0, 0.3]]), "bias": jnp.array([0.2, 0.1])}


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
