"""The resolved config of a run, recorded as ``workdir/config.json``; a resume must not change the experiment.

When the workdir holds checkpoints, `check` refuses (`ConfigError`, each change listed ``old → new``) a
config that differs from the record in a field that alters the trajectory, or a record that is missing,
unreadable or not a JSON object, unless ``allow_change`` (``--allow_config_change``). Once the checkpoint
is restored, `record` writes the config, keeping a replaced record as ``config.<k>.json``. Fields in
`NEUTRAL_FIELDS` may change freely (extending ``num_train_steps`` to continue a finished run is common);
the learning-rate schedule's steps are recorded too, so a ``num_train_steps`` that compresses the
schedule differently counts as a change.
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging

from training.errors import ConfigError

CONFIG_FILE = "config.json"

# Fields a resume may change: how long to train, how often to log, evaluate and save, where the data
# lives, the top-1 a config's source reports (printed only). Any other field, including one this list
# does not know, alters the trajectory (pmap and jit reduce in different orders: even `parallelism`).
NEUTRAL_FIELDS = frozenset(
  "expected_top1 data_dir cache num_train_steps log_every_steps eval_every_steps steps_per_eval "
  "eval_batch_size diagnostics_every_steps checkpoint_every_steps keep_checkpoints progress_bar "
  "max_consecutive_skips prefetch_batches preemption_sync_every_steps".split()
)

_ABSENT = "<absent>"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  nested = [
    _flatten(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {prefix + k: v} for k, v in tree.items()
  ]
  return {key: value for flat in nested for key, value in flat.items()}


def as_json(config: ml_collections.ConfigDict, schedule: Mapping[str, int] | None = None) -> dict[str, Any]:
  """The config as plain JSON values (tuples become lists, as they do once written), with the steps of
  its learning-rate ``schedule`` where given (a shorter ``num_train_steps`` compresses the schedule)."""
  values = config.to_dict() | ({"schedule": dict(schedule)} if schedule else {})
  return json.loads(json.dumps(values, default=repr))


def changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """Field → (old, new) for every field that differs, ``"<absent>"`` where one side lacks it."""
  old, new = _flatten(recorded), _flatten(current)
  pairs = {key: (old.get(key, _ABSENT), new.get(key, _ABSENT)) for key in sorted(old.keys() | new.keys())}
  return {key: (before, after) for key, (before, after) in pairs.items() if before != after}


def trajectory_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """The `changes` outside `NEUTRAL_FIELDS` (a field of ``model_kwargs`` counts by its full name)."""
  return {key: change for key, change in changes(recorded, current).items() if key not in NEUTRAL_FIELDS}


def _read(path: Path) -> Any:
  """The record at ``path``: a dict, or a string saying why there is none."""
  try:
    recorded = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    return f"{'missing' if isinstance(error, FileNotFoundError) else 'unreadable'} ({error})"
  return recorded if isinstance(recorded, dict) else f"not a JSON object (a {type(recorded).__name__})"


def check(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  resuming: bool,
  allow_change: bool,
  schedule: Mapping[str, int] | None = None,
) -> None:
  """Compares ``config`` with ``workdir/config.json`` when ``resuming`` (on every process; see above)."""
  path = Path(workdir) / CONFIG_FILE
  recorded = _read(path) if resuming else None
  if isinstance(recorded, str) and not allow_change:
    raise ConfigError(
      f"{path} is {recorded}; it records the config of the checkpoints in {Path(workdir)}. Restore it, "
      "or pass --allow_config_change to resume with this config and record it."
    )
  altered = trajectory_changes(recorded, as_json(config, schedule)) if isinstance(recorded, dict) else {}
  listing = "\n".join(f"  {key}: {old!r} → {new!r}" for key, (old, new) in altered.items())
  if altered and not allow_change:
    raise ConfigError(
      f"The run in {Path(workdir)} was made with another config ({path}); resuming with these changes "
      f"would alter its training trajectory:\n{listing}\nUse another --workdir, or pass "
      "--allow_config_change to resume anyway."
    )
  if altered:
    logging.warning("Resuming with a changed config (--allow_config_change):\n%s", listing)


def record(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, schedule: Mapping[str, int] | None = None
) -> None:
  """Writes ``workdir/config.json`` (process 0; the restore before it synchronised the processes)."""
  if jax.process_index() != 0:
    return
  path, current = Path(workdir) / CONFIG_FILE, as_json(config, schedule)
  path.parent.mkdir(parents=True, exist_ok=True)
  recorded = _read(path)
  if path.exists() and (isinstance(recorded, str) or trajectory_changes(recorded, current)):
    index = 1
    while path.with_name(f"config.{index}.json").exists():
      index += 1
    os.replace(path, path.with_name(f"config.{index}.json"))
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)
