"""Metrics to ``workdir/metrics.jsonl`` and TensorBoard, from process 0 only.

``metrics.jsonl`` holds one JSON object per logged step: ``{"step": 40, "train/loss": ..., "train/lr":
..., "eval/accuracy": ...}``, ``step`` being the number of optimizer steps completed. It is written line by
line and flushed, so a killed run leaves whole lines plus at most one torn last line. On resume from
a checkpoint at step s, the file is cut back to the lines with ``step <= s`` (a torn line is dropped),
so that the resumed run continues it without a gap or a duplicate. Lines that are not records (torn by a
kill, or damaged: invalid UTF-8, ``{}``, a bare number) are counted, reported and moved to
``metrics.jsonl.rejected``; they never stop a resume.

TensorBoard event files go to ``workdir`` through `tensorboardX`, which writes them without TensorFlow
(the digits, MNIST-1D and fake-data runs never import it); the file is opened at the first write, so a
run that logs nothing leaves none. Every process imports the writer, although only process 0 writes:
imports of unequal length would make the processes reach their first collective at different times,
and CPU (gloo) collectives give up after 30 s.
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


def _parse(line: bytes) -> tuple[dict | None, str | None]:
  """(record, None) for a complete record line, (None, why not) otherwise."""
  try:
    record = json.loads(line.decode("utf-8"))
  except UnicodeDecodeError:
    return None, "invalid UTF-8"
  except json.JSONDecodeError:
    return None, "not JSON (a torn or damaged line)"
  if not isinstance(record, dict):
    return None, f"a JSON {type(record).__name__}, not an object"
  step = record.get("step")
  if not isinstance(step, int) or isinstance(step, bool) or step < 0:
    return None, "no integer 'step'"
  return record, None


def read_metrics_with_rejects(path: str | os.PathLike) -> tuple[list[dict], list[tuple[int, str, bytes]]]:
  """The complete records of a metrics.jsonl file, in order, and the lines that are not records.

  Returns:
    (records, rejected): ``rejected`` holds (line number from 1, why, the raw line) for every
    non-empty line that does not parse as a JSON object with an integer ``step``.
  """
  path = Path(path)
  if not path.exists():
    return [], []
  records, rejected = [], []
  for number, line in enumerate(path.read_bytes().splitlines(), start=1):
    if not line.strip():
      continue
    record, why = _parse(line)
    if record is None:
      rejected.append((number, why, line))
    else:
      records.append(record)
  return records, rejected


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """The complete records of a metrics.jsonl file, in order; other lines (torn, damaged) are skipped."""
  return read_metrics_with_rejects(path)[0]


def truncate_metrics(path: str | os.PathLike, last_step: int) -> int:
  """Rewrites ``path`` atomically with only its complete records of ``step <= last_step``.

  Lines that are not records are dropped from ``path``, appended to ``<path>.rejected`` (never lost)
  and reported in one warning with their count and the first few line numbers and reasons.

  Returns:
    The number of records kept.
  """
  path = Path(path)
  records, rejected = read_metrics_with_rejects(path)
  if rejected:
    rejects = path.with_name(path.name + ".rejected")
    with rejects.open("ab") as file:
      file.writelines(line + b"\n" for _, _, line in rejected)
    examples = "; ".join(f"line {number}: {why}" for number, why, _ in rejected[:3])
    logging.warning(
      "%s: skipped %d line(s) that are not metrics records (%s%s); moved to %s.",
      path,
      len(rejected),
      examples,
      "; ..." if len(rejected) > 3 else "",
      rejects,
    )
  kept = [record for record in records if record["step"] <= last_step]
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
  os.replace(tmp, path)
  return len(kept)


def _to_json_number(value) -> float | int | None:
  """A Python number for JSON (NaN and ±inf, which JSON lacks, become None)."""
  value = value.item() if hasattr(value, "item") else value
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricsLog:
  """Writes scalar metrics per step to metrics.jsonl and TensorBoard (process 0; a no-op elsewhere)."""

  def __init__(self, workdir: str | os.PathLike, *, start_step: int):
    """Opens the log of a run that starts (or resumes) at ``start_step`` completed steps."""
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / METRICS_FILE
    truncate_metrics(path, start_step)
    self._file = path.open("a")
    self._workdir = workdir
    self._writer = None  # Opened at the first write.

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    """Appends one record for ``step`` and sends the scalars to TensorBoard."""
    if not self.enabled:
      return
    record = {"step": int(step), **{key: _to_json_number(value) for key, value in scalars.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._writer is None:
      self._writer = tensorboardX.SummaryWriter(os.fspath(self._workdir))
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(value), int(step))
    self._writer.flush()  # A killed run loses at most the window being logged.

  def close(self) -> None:
    """Flushes TensorBoard and closes the files."""
    if not self.enabled:
      return
    if self._writer is not None:
      self._writer.close()
    self._file.close()
