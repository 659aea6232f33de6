"""Metrics to ``workdir/metrics.jsonl`` and TensorBoard (`tensorboardX`, no TensorFlow), from process 0 only.

``metrics.jsonl`` holds one JSON object per logged step (``{"step": 40, "train/loss": ...}``), flushed line
by line; a resume from step s cuts it back to the records with ``step <= s`` (no gap, no duplicate) and
moves lines that are not records (torn by a kill, or damaged) to ``metrics.jsonl.rejected``. Event files
reach the disk within a second of each logged step. Every process imports the writer (imports of unequal
length would delay the first collective, and CPU collectives give up after 30 s).
"""

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import tensorboardX
from absl import logging

METRICS_FILE = "metrics.jsonl"


def _parse(line: bytes) -> dict | str:
  """The record of a complete record line, or why the line is not one."""
  try:
    record = json.loads(line.decode("utf-8"))
  except UnicodeDecodeError:
    return "invalid UTF-8"
  except json.JSONDecodeError:
    return "not JSON (a torn or damaged line)"
  if not isinstance(record, dict):
    return f"a JSON {type(record).__name__}, not an object"
  step = record.get("step")
  return record if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else "no integer 'step'"


def _read(path: Path) -> tuple[list[dict], list[tuple[int, str, bytes]]]:
  """The records of ``path`` in order, and (line number, why, line) of the non-empty lines that are not."""
  lines = path.read_bytes().splitlines() if path.exists() else []
  parsed = [(number, line, _parse(line)) for number, line in enumerate(lines, start=1) if line.strip()]
  records = [record for _, _, record in parsed if isinstance(record, dict)]
  return records, [(number, why, line) for number, line, why in parsed if isinstance(why, str)]


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """The complete records of a metrics.jsonl file, in order; other lines (torn, damaged) are skipped."""
  return _read(Path(path))[0]


def truncate_metrics(path: str | os.PathLike, last_step: int) -> int:
  """Rewrites ``path`` atomically with only its records of ``step <= last_step``; returns how many.

  Lines that are not records are appended to ``<path>.rejected`` and reported in one warning.
  """
  path = Path(path)
  records, rejected = _read(path)
  if rejected:
    with path.with_name(path.name + ".rejected").open("ab") as file:
      file.writelines(line + b"\n" for _, _, line in rejected)
    examples = "; ".join(f"line {number}: {why}" for number, why, _ in rejected[:3])
    message = "%s: skipped %d line(s) that are not records (%s): moved to %s.rejected."
    logging.warning(message, path, len(rejected), examples, path.name)
  kept = [record for record in records if record["step"] <= last_step]
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
  os.replace(tmp, path)
  return len(kept)


def _to_json_number(value) -> float | int | None:
  """A Python number for JSON (NaN and ±inf, which JSON lacks, become None)."""
  value = value.item() if hasattr(value, "item") else value
  return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLog:
  """Writes scalar metrics per step to metrics.jsonl and TensorBoard (process 0; a no-op elsewhere)."""

  def __init__(self, workdir: str | os.PathLike, *, start_step: int):
    """Opens the log of a run that starts (or resumes) at ``start_step`` completed steps."""
    self.enabled = jax.process_index() == 0
    if self.enabled:
      self._workdir, self._writer = Path(workdir), None  # The writer is opened at the first write.
      truncate_metrics(self._workdir / METRICS_FILE, start_step)
      self._file = (self._workdir / METRICS_FILE).open("a")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Appends one record for ``step`` and sends the scalars to TensorBoard."""
    if not self.enabled:
      return
    record = {"step": int(step), **{key: _to_json_number(value) for key, value in scalars.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    # Flushed within a second of each logged step (tensorboardX's `flush` leaves its queue unwritten).
    self._writer = self._writer or tensorboardX.SummaryWriter(os.fspath(self._workdir), flush_secs=1)
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(value), int(step))

  def close(self) -> None:
    """Flushes TensorBoard and closes the files."""
    if self.enabled:
      if self._writer is not None:
        self._writer.close()
      self._file.close()
