"""The large-batch study on any data set: the sizing rule, the command line, a TFDS data set made here.

The TFDS data set is built in a temporary directory by a builder defined below (nothing is downloaded) and
read back by name, as a user's prepared data set would be.
"""

import json
import subprocess

import numpy as np
import pytest

from experiments.large_batch_study import cli, schema, settings
from experiments.trust_ratios import layer_norms

SIZES = [320, 321, 1280, 1438, 5000, 40_000, 1_000_000]


def _regime_summary(num_train: int, sweep: dict) -> dict:
  """A summary with the sweep's batch sizes and step counts (E steps of N // B per epoch)."""
  entry = {c: {"mean": 0.5, "std": 0.0, "lr": 0.1} for c in schema.CONTENDERS}
  batches = [
    {"batch_size": b, "steps": sweep["num_epochs"] * (num_train // b), "test_accuracy": entry}
    for b in sweep["batch_sizes"]
  ]
  models = {"m": {"batch_norm": False, "batches": batches}, "m_bn": {"batch_norm": True, "batches": batches}}
  return {"command": "c", "wall_minutes": 1.0, "machine": "m", "datasets": {"d": {"models": models}}}


@pytest.mark.parametrize("num_train", SIZES)
def test_sweep_follows_the_paper_regime_at_the_fewest_epochs(num_train):
  sweep = settings.sweep_for(num_train)
  assert schema.regime_problems(_regime_summary(num_train, sweep)) == []
  b_min, b_max, epochs = sweep["batch_sizes"][0], sweep["batch_sizes"][-1], sweep["num_epochs"]
  assert (epochs - 1) * (num_train // b_max) < schema.MIN_STEPS  # one epoch fewer is not enough.
  assert num_train // b_max >= 10 and 2 <= b_min <= 16 and b_min & (b_min - 1) == 0
  assert b_min == 16 or num_train // (2 * b_max) < 10  # the largest B_min that keeps 10 steps per epoch.
  np.testing.assert_allclose(np.diff(np.log2(sweep["sgd_grid"])), 1.0)  # spaced by 2, ...
  assert sweep["sgd_grid"][0] == pytest.approx(0.005 * b_min / 16)  # ... linear in B_min, as SGD's LR.
  assert epochs in sweep["epoch_budgets"] and sweep["epoch_budgets"] == tuple(sorted(sweep["epoch_budgets"]))


def test_a_data_set_too_small_for_the_sweep_is_refused_with_the_reason():
  with pytest.raises(ValueError, match=r"'tiny' has 319 training examples .* at least 320"):
    settings.sweep_for(319, "'tiny'")


def test_unknown_model_is_refused():
  with pytest.raises(ValueError, match="model must be one of"):
    settings.settings_for("digits", model="resnet50")
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_args(["--model", "resnet50"])
  assert exit_info.value.code == 2


def test_quick_writes_outside_the_committed_results(tmp_path):
  assert cli.parse_args(["--quick"]).output_dir == cli.QUICK_OUTPUT_DIR
  assert cli.parse_args(["--quick", "--output_dir", str(tmp_path)]).output_dir == tmp_path
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_args(["--quick", "--output_dir", str(cli.RESULTS_DIR)])
  assert exit_info.value.code == 2
  assert layer_norms.parse_args(["--quick"]).output_dir == layer_norms.QUICK_OUTPUT_DIR
  with pytest.raises(SystemExit):
    layer_norms.parse_args(["--quick", "--output_dir", str(layer_norms.DEFAULT_OUTPUT_DIR)])
  root = cli.HERE.parents[1]
  for quick_dir in (cli.QUICK_OUTPUT_DIR, layer_norms.QUICK_OUTPUT_DIR):
    path = quick_dir / "study_quick_summary.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=root, check=False)
    assert ignored.returncode == 0, f"{quick_dir} is not ignored by git"


def _prepare(data_dir, name: str, num_train: int, num_test: int) -> None:
  """Writes a TFDS image-classification data set of 8x8 gray images, 4 classes (a bright band per class)."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class Bands(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      image, label = tfds.features.Image(shape=(8, 8, 1)), tfds.features.ClassLabel(num_classes=4)
      features = {"image": image, "label": label}
      return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(features), supervised_keys=("image", "label")
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(num_train, 0), "test": self._generate_examples(num_test, 1)}

    def _generate_examples(self, count, seed):
      rng = np.random.default_rng(seed)
      for i in range(count):
        label = int(rng.integers(4))
        image = rng.integers(0, 60, (8, 8, 1), dtype=np.uint8)
        image[2 * label : 2 * label + 2] += 150
        yield i, {"image": image, "label": label}

  Bands.name = name
  Bands(data_dir=str(data_dir)).download_and_prepare()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  _prepare(data_dir, "study_bands", num_train=400, num_test=40)
  _prepare(data_dir, "study_too_small", num_train=300, num_test=20)
  return str(data_dir)


@pytest.mark.slow
def test_settings_of_a_tfds_data_set_follow_its_size(tfds_dir):
  s = settings.settings_for("study_bands", data_dir=tfds_dir)
  # 400 training examples, 40 of them for validation: 360 = 11 steps per epoch at B = 32.
  assert (s.val_examples, s.models, s.data_dir) == (40, ("small_alexnet", "small_alexnet_bn"), tfds_dir)
  sweep = settings.sweep_for(360)
  assert {k: getattr(s, k) for k in sweep} == sweep and s.batch_sizes == (2, 4, 8, 32)
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_args(["--dataset", "study_too_small", "--data_dir", tfds_dir])
  assert exit_info.value.code == 2


@pytest.mark.slow
@pytest.mark.timeout(900)  # compilation-bound: about 13 step programs, each compiled once
def test_quick_study_runs_on_a_tfds_data_set(tfds_dir, tmp_path, capsys):
  argv = ["--dataset", "study_bands", "--data_dir", tfds_dir, "--model", "small_alexnet", "--quick"]
  paths = cli.main([*argv, "--num_seeds", "1", "--output_dir", str(tmp_path)])
  summary = json.loads(paths["summary"].read_text())
  schema.validate(summary)
  record = json.loads(paths["study_bands_json"].read_text())
  assert (record["num_train"], record["num_val"], record["num_test"]) == (256, 40, 40)
  assert set(summary["datasets"]["study_bands"]["models"]) == {"small_alexnet", "small_alexnet_bn"}
  for point in record["points"]:  # accuracies are counts of the 40 validation and 40 test examples.
    for field in ("val_accuracy", "test_accuracy"):
      assert abs(40 * point[field] - round(40 * point[field])) < 1e-6
  assert paths["study_bands_markdown"].read_text().startswith("**Smoke test")
  assert "Smoke test" in capsys.readouterr().out
