"""Tests of the large-batch study (experiments/large_batch_study/).

The quick run checks the study's bookkeeping against an independent recomputation from its raw runs
(means and stds over seeds, the choice on validation, grid widening, the linear scaling rule, step
counts, trust ratios); it does not assert that LARS beats SGD, which a quick mode could be rigged to show
either way. The committed summary is checked against the schema and the paper's regime. The engine
has its own tests (tests/test_study_engine.py), data sets and the command line theirs
(tests/test_study_datasets.py).
"""

import copy
import dataclasses
import json
import shlex
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.large_batch_study import cli, report, settings
from experiments.large_batch_study import schema as study_schema
from experiments.large_batch_study import study as large_batch_study

ETA, BETA = 0.001, 5e-4
REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "experiments" / "large_batch_study" / "results"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  output_dir = tmp_path_factory.mktemp("study")
  paths = cli.main(["--quick", "--output_dir", str(output_dir)])
  summary = json.loads(paths["summary"].read_text())
  return paths, summary, json.loads(paths["digits_json"].read_text())


def _points(record):
  return {
    (p["model"], p["optimizer"], p["batch_size"], p["epochs"], p["seed"], p["lr"]): p
    for p in record["points"]
  }


def _seed_stats(points, key, lr, num_seeds):
  test = np.asarray([points[(*key, s, lr)]["test_accuracy"] for s in range(num_seeds)])
  return test.mean(), test.std()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_summary_has_the_schema_and_its_numbers_come_from_the_runs(quick_run):
  _paths, summary, record = quick_run
  study_schema.validate(summary)
  settings = record["settings"]
  points = _points(record)
  num_seeds, epochs, b_min = settings["num_seeds"], settings["num_epochs"], min(settings["batch_sizes"])
  optimizer = {"sgd_linear": "sgd", "sgd_tuned": "sgd", "lars": "lars"}
  for name, model in summary["datasets"]["digits"]["models"].items():
    assert model["batch_norm"] == name.endswith("_bn")
    assert [b["batch_size"] for b in model["batches"]] == sorted(settings["batch_sizes"])
    base = model["batches"][0]["test_accuracy"]["sgd_tuned"]["lr"]
    for batch in model["batches"]:
      assert batch["steps"] == epochs * (record["num_train"] // batch["batch_size"])
      for contender, entry in batch["test_accuracy"].items():
        key = (name, optimizer[contender], batch["batch_size"], epochs)
        mean, std = _seed_stats(points, key, entry["lr"], num_seeds)
        np.testing.assert_allclose([entry["mean"], entry["std"]], [mean, std], rtol=1e-12)
        for s in range(num_seeds):  # accuracies are counts of the test split.
          count = points[(*key, s, entry["lr"])]["test_accuracy"] * record["num_test"]
          assert abs(count - round(count)) < 1e-6
      linear = batch["test_accuracy"]["sgd_linear"]["lr"]
      np.testing.assert_allclose(linear, base * batch["batch_size"] / b_min, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_study_full_batch_is_the_whole_training_set(quick_run):
  _, summary, record = quick_run
  full, points = record["full_batch"], _points(record)
  assert full["batch_size"] == record["num_train"] and full["steps"] == full["epochs"] == 8
  smallest = summary["datasets"]["digits"]["models"][full["model"]]["batches"][0]
  linear = smallest["test_accuracy"]["sgd_linear"]["lr"] * record["num_train"] / smallest["batch_size"]
  np.testing.assert_allclose(full["test_accuracy"]["sgd_linear"]["lr"], linear, rtol=1e-12)
  recipes = {"sgd_linear": "sgd", "sgd_tuned": "sgd", "lars": "lars", "lars_rank_mask": "lars_rank_mask"}
  for contender, entry in full["test_accuracy"].items():
    key = (full["model"], recipes[contender], full["batch_size"], full["epochs"])
    mean, std = _seed_stats(points, key, entry["lr"], record["settings"]["num_seeds"])
    np.testing.assert_allclose([entry["mean"], entry["std"]], [mean, std], rtol=1e-12)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_study_chooses_on_seed_0_validation_and_widens_at_edges(quick_run):
  _, _, record = quick_run
  points = _points(record)
  epochs = record["settings"]["num_epochs"]
  tunings = []
  for name, model in record["models"].items():
    for batch in model["batches"]:
      for contender in ("sgd_tuned", "lars"):
        entry = batch["test_accuracy"][contender]
        tunings.append(
          ((name, "sgd" if contender == "sgd_tuned" else "lars", batch["batch_size"], epochs), entry)
        )
  for row in record["epochs"]["rows"]:
    for contender in ("sgd_tuned", "lars"):
      key = (
        record["epochs"]["model"],
        "sgd" if contender == "sgd_tuned" else "lars",
        record["epochs"]["batch_size"],
        row["epochs"],
      )
      tunings.append((key, row["test_accuracy"][contender]))
  ablation = record["mask_ablation"]
  for batch in ablation["batches"]:
    key = (ablation["model"], "lars_rank_mask", batch["batch_size"], epochs)
    tunings.append((key, batch["lars_rank_mask"]))
    assert set(batch["lars"]["tuning"]["grid"]) <= set(batch["lars_rank_mask"]["tuning"]["grid"])
  full = record["full_batch"]
  for contender, recipe in (("sgd_tuned", "sgd"), ("lars", "lars"), ("lars_rank_mask", "lars_rank_mask")):
    key = (full["model"], recipe, full["batch_size"], full["epochs"])
    tunings.append((key, full["test_accuracy"][contender]))
  assert len(tunings) == 2 * 2 * 2 + 2 * len(record["epochs"]["rows"]) + 2 + 3
  trains = 2 / 10  # digits: validation accuracy above twice chance.
  for key, entry in tunings:
    tuning = entry["tuning"]
    grid = tuning["grid"]
    assert grid == sorted(grid) and np.allclose(np.diff(np.log2(grid)), 1.0)  # spaced by 2.
    val = [points[(*key, 0, lr)]["val_accuracy"] for lr in grid]
    assert tuning["val"] == val
    choice = int(np.argmax(val))
    assert entry["lr"] == grid[choice]
    interior = 0 < choice < len(grid) - 1 and max(val) > trains
    assert tuning["at_edge"] == (not interior)
    assert tuning["widened"] <= record["settings"]["max_widenings"]
    if not interior:
      assert tuning["widened"] == record["settings"]["max_widenings"]


def _tune_on(val_of_lr, grid, max_widenings=4):
  """`Study.tune` on a made-up validation curve (no training)."""
  study = large_batch_study.Study.__new__(large_batch_study.Study)
  study.settings = dataclasses.replace(settings.settings_for("digits"), max_widenings=max_widenings)
  study.split = types.SimpleNamespace(num_classes=10)
  study.points, trained = {}, []

  def train(model, optimizer, batch, epochs, seeds, learning_rates):
    for lr in learning_rates:
      if (model, optimizer, batch, epochs, 0, lr) in study.points:
        continue
      trained.append(lr)
      study.points[(model, optimizer, batch, epochs, 0, lr)] = types.SimpleNamespace(
        val_accuracy=val_of_lr(lr)
      )

  study.train = train
  return study.tune("m", "lars", 64, 10, grid), trained


def test_tune_keeps_an_interior_choice_and_widens_at_an_edge():
  tuning, _ = _tune_on(lambda lr: {1: 0.5, 2: 0.9, 4: 0.8, 8: 0.3}[lr], [1, 2, 4, 8])
  assert (tuning["lr"], tuning["widened"], tuning["at_edge"]) == (2, 0, False)
  tuning, _ = _tune_on(lambda lr: 0.9 - 0.01 * abs(np.log2(lr / 32)), [1, 2, 4, 8])  # best at 32
  assert (tuning["lr"], tuning["grid"], tuning["widened"], tuning["at_edge"]) == (
    32,
    [1, 2, 4, 8, 16, 32, 64],
    3,
    False,
  )


def test_tune_widens_downwards_when_nothing_trains():
  # Chance-level ties everywhere above 0.5, the highest one at the top edge: an argmax there means nothing.
  curve = {0.125: 0.8, 0.25: 0.9, 0.5: 0.1, 1: 0.1, 2: 0.11, 4: 0.1, 8: 0.12}
  tuning, trained = _tune_on(curve.__getitem__, [1, 2, 4, 8])
  assert trained == [1, 2, 4, 8, 0.5, 0.25, 0.125]
  assert (tuning["lr"], tuning["widened"], tuning["at_edge"]) == (0.25, 3, False)
  tuning, _ = _tune_on(lambda lr: 0.1, [1, 2, 4, 8], max_widenings=2)  # never trains: reported at an edge
  assert (tuning["grid"], tuning["at_edge"]) == ([0.25, 0.5, 1, 2, 4, 8], True)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_study_trust_ratios_follow_the_paper_formula(quick_run):
  _, _, record = quick_run
  lars = [p for p in record["points"] if p["optimizer"] == "lars"]
  assert lars and all(not p["trust_ratio"] for p in record["points"] if p["optimizer"] == "sgd")
  for point in lars:
    assert set(point["trust_ratio"]) == {f"conv{i}/kernel" for i in (1, 2, 3)} | {
      f"fc{i}/kernel" for i in (4, 5, 6)
    }
    for layer, lam in point["trust_ratio"].items():
      w, g = point["param_norm"][layer], point["grad_norm"][layer]
      if w > 0 and g > 0:
        np.testing.assert_allclose(lam, ETA * w / (g + BETA * w), rtol=1e-5)
      else:
        assert lam == 1.0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_quick_study_markdown_shows_the_summary(quick_run):
  paths, summary, record = quick_run
  text = paths["digits_markdown"].read_text()
  assert text.splitlines()[0] == f"**{report.SMOKE_TEST}**"  # labelled before any number
  assert report.headline_sentence(record).startswith("Smoke test")
  table = text.split("### Test accuracy")[1].split("###")[0]
  rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| small")]
  expected = [(n, b) for n, m in summary["datasets"]["digits"]["models"].items() for b in m["batches"]]
  assert len(rows) == len(expected)
  for row, (name, batch) in zip(rows, expected, strict=True):
    assert row[0].strip() == name and int(row[1]) == batch["batch_size"] and int(row[2]) == batch["steps"]
    for cell, contender in zip(row[3:], large_batch_study.CONTENDERS, strict=True):
      entry = batch["test_accuracy"][contender]
      assert cell.strip().startswith(
        f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f} ({entry['lr']:.3g}"
      )
  head = study_schema.headline(summary, "digits")
  assert f"LARS {100 * head['lars_small']:.1f}% → {100 * head['lars_large']:.1f}%" in text
  for section, entries in (
    ("### The mask", [b["lars_rank_mask"] for b in record["mask_ablation"]["batches"]]),
    ("### The whole training set", list(record["full_batch"]["test_accuracy"].values())),
  ):
    body = text.split(section)[1].split("###")[0]
    for entry in entries:
      assert f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f} ({entry['lr']:.3g}" in body
  for key in ("digits_accuracy_vs_batch", "digits_epochs"):
    assert paths[key].stat().st_size > 10_000  # a rendered figure, not an empty canvas.


def test_committed_summary_has_the_schema_and_the_paper_regime():
  summary = json.loads((RESULTS / "study_summary.json").read_text())
  study_schema.validate(summary)
  assert set(summary["datasets"]) == {"digits", "mnist1d"}
  assert study_schema.regime_problems(summary) == []
  for name, dataset in summary["datasets"].items():
    record = json.loads((RESULTS / f"study_{name}.json").read_text())
    assert record["summary"] == summary  # the per-data-set record and the summary are one run.
    assert record["num_train"] == {"digits": 1280, "mnist1d": 40000}[name]
    for model in dataset["models"].values():
      for batch in model["batches"]:
        assert batch["steps"] == record["settings"]["num_epochs"] * (
          record["num_train"] // batch["batch_size"]
        )


@pytest.mark.slow
def test_committed_results_come_from_their_command_with_todays_settings():
  summary = json.loads((RESULTS / "study_summary.json").read_text())
  argv = shlex.split(summary["command"])
  assert argv[:3] == ["python", "-m", cli.__package__]  # the command runs this package's command line
  args = cli.parse_args(argv[3:])
  assert not args.quick and args.output_dir == RESULTS
  assert [s.dataset for s in args.settings] == list(summary["datasets"])
  for s in args.settings:
    record = json.loads((RESULTS / f"study_{s.dataset}.json").read_text())
    expected = dataclasses.asdict(s) | {"model_kwargs": repr(dict(s.model_kwargs))}
    assert record["settings"] == json.loads(json.dumps(expected)), s.dataset


def _summary():
  entry = {"mean": 0.9, "std": 0.01, "lr": 0.1}
  batches = [
    {"batch_size": b, "steps": 6400 // b, "test_accuracy": {c: dict(entry) for c in study_schema.CONTENDERS}}
    for b in (2, 4, 8, 32)
  ]
  return {
    "command": "python -m experiments.large_batch_study",
    "wall_minutes": 12.5,
    "machine": "cpu",
    "datasets": {
      "d": {
        "models": {
          "a": {"batch_norm": False, "batches": batches},
          "a_bn": {"batch_norm": True, "batches": copy.deepcopy(batches)},
        }
      }
    },
  }


@pytest.mark.parametrize(
  ("edit", "message"),
  [
    (lambda s: s.pop("machine"), "keys must be"),
    (lambda s: s.update(extra=1), "keys must be"),
    (
      lambda s: s["datasets"]["d"]["models"]["a"]["batches"][0]["test_accuracy"]["lars"].update(mean=90.0),
      "fraction",
    ),
    (lambda s: s["datasets"]["d"]["models"]["a"]["batches"][0].update(steps=True), "positive int"),
    (
      lambda s: s["datasets"]["d"]["models"]["a"]["batches"][0]["test_accuracy"].pop("sgd_tuned"),
      "keys must be",
    ),
    (lambda s: s["datasets"]["d"]["models"]["a"].update(batch_norm="no"), "bool"),
    (
      lambda s: s["datasets"]["d"]["models"]["a"]["batches"][1]["test_accuracy"]["sgd_linear"].update(
        lr=float("nan")
      ),
      "finite",
    ),
    (lambda s: s.update(wall_minutes=0), "positive"),
  ],
)
def test_validator_rejects_what_breaks_the_schema(edit, message):
  summary = _summary()
  study_schema.validate(summary)
  edit(summary)
  with pytest.raises(ValueError, match=message):
    study_schema.validate(summary)


def test_regime_rules():
  summary = _summary()
  assert study_schema.regime_problems(summary) == []
  model = summary["datasets"]["d"]["models"]["a"]
  model["batches"][-1].update(batch_size=16, steps=400)  # 8x only.
  assert any("16 x smallest" in p for p in study_schema.regime_problems(summary))
  summary = _summary()
  for batch in summary["datasets"]["d"]["models"]["a"]["batches"]:
    batch["steps"] = 3200 // batch["batch_size"]  # 100 steps at the largest batch.
  assert any("< 200" in p for p in study_schema.regime_problems(summary))
  summary = _summary()
  summary["datasets"]["d"]["models"]["a"]["batches"][-1]["steps"] = 400  # twice the epochs of the rest.
  assert any("epoch budget" in p for p in study_schema.regime_problems(summary))
  summary = _summary()
  summary["datasets"]["d"]["models"]["a_bn"]["batch_norm"] = False
  assert any("no-BN and one BN" in p for p in study_schema.regime_problems(summary))
  summary = _summary()
  summary["datasets"]["d"]["models"]["a"]["batches"].pop(1)
  assert any(">= 4" in p for p in study_schema.regime_problems(summary))


def test_headline_is_each_contenders_own_drop():
  summary = _summary()
  batches = summary["datasets"]["d"]["models"]["a"]["batches"]
  batches[0]["test_accuracy"]["sgd_linear"]["mean"] = 0.95
  batches[-1]["test_accuracy"]["sgd_linear"]["mean"] = 0.50
  batches[-1]["test_accuracy"]["lars"]["mean"] = 0.89
  head = study_schema.headline(summary, "d")
  assert head["model"] == "a" and head["batch_size"] == 32 and head["steps"] == 200
  np.testing.assert_allclose(
    [head["sgd_linear_drop"], head["lars_drop"], head["sgd_tuned_drop"]], [0.45, 0.01, 0.0]
  )


@pytest.mark.parametrize("recipe, bias_adapted", [("lars", True), ("lars_rank_mask", False)])
def test_lars_contender_adapts_biases_and_the_ablation_steps_them_by_sgd(recipe, bias_adapted):
  """The study's `lars` is Algorithm 1 on every leaf; its ablation keeps the library's default mask."""
  rng = np.random.default_rng(3)
  b, g = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
  params = {"bias": jnp.asarray(b), "kernel": jnp.ones((6, 2))}
  grads = {"bias": jnp.asarray(g), "kernel": jnp.ones((6, 2))}
  optimizer, hparams = large_batch_study.RECIPES[recipe]
  tx = hparams.factory(optimizer)(2.0)
  updates, _ = tx.update(grads, tx.init(params), params)
  if bias_adapted:
    lam = ETA * np.linalg.norm(b) / (np.linalg.norm(g) + BETA * np.linalg.norm(b))
    expected = 2.0 * lam * (g + BETA * b)
  else:
    expected = 2.0 * g
  np.testing.assert_allclose(np.asarray(updates["bias"]), -expected, rtol=1e-5)


@pytest.mark.parametrize("smoke", [True, False])
def test_only_a_smoke_test_report_says_so_before_any_number(smoke):
  record = json.loads((RESULTS / "study_digits.json").read_text()) | {"smoke_test": smoke}
  first_line = report.markdown(record, record["summary"]).splitlines()[0]
  assert (first_line == f"**{report.SMOKE_TEST}**") == smoke
  assert report.headline_sentence(record).startswith("Smoke test") == smoke
