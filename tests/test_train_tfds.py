"""train.py's loop on a TFDS data set: a small one is read from its files once, then served from memory."""

from pathlib import Path

import input_pipeline_testing as testing
import pytest

from configs import default
from training import loop, metrics_log

TIMING_KEYS = ("train/steps_per_sec", "train/images_per_sec", "wall_time_s")


def _config(name: str, data_dir: Path):
  config = default.get_config()
  config.update(dataset=name, data_dir=str(data_dir), image_size=8, batch_size=16, num_epochs=3.0)
  config.update(warmup_epochs=1.0, eval_every_steps=-1, log_every_steps=1, progress_bar=False)
  return config  # 60 training, 20 test images: 3 steps of 16 per epoch, an evaluation after each.


def _metrics(workdir: Path) -> list[dict]:
  records = metrics_log.read_metrics(workdir / metrics_log.METRICS_FILE)
  return [{key: value for key, value in record.items() if key not in TIMING_KEYS} for record in records]


@pytest.mark.slow
def test_a_small_data_set_is_read_from_its_files_once(tmp_path, monkeypatch):
  """After the first evaluation the TFRecord files are deleted; the run ends as the reference run does."""
  data_dir = tmp_path / "data"
  config = _config(testing.build_grey(str(data_dir)), data_dir)
  reference = loop.train_and_evaluate(config, tmp_path / "reference")

  evaluate = loop._TrainingRun.evaluate

  def evaluate_then_delete_the_files(self, state):
    metrics = evaluate(self, state)
    for record_file in data_dir.rglob("*.tfrecord*"):
      record_file.unlink()
    return metrics

  monkeypatch.setattr(loop._TrainingRun, "evaluate", evaluate_then_delete_the_files)
  summary = loop.train_and_evaluate(config, tmp_path / "deleted")
  assert not list(data_dir.rglob("*.tfrecord*"))
  assert summary["step"] == reference["step"] == 9
  for key in reference.keys() - TIMING_KEYS:
    assert summary[key] == reference[key], key
  assert _metrics(tmp_path / "deleted") == _metrics(tmp_path / "reference")
