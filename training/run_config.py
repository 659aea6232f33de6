"""The resolved config of a run, recorded as ``workdir/config.json``; a resume must not change the experiment.

At start, process 0 writes the config to ``config.json``. When
the workdir already holds checkpoints, the config is first compared with the recorded one: a change to
a field that alters the training trajectory (the model, the data, the batch, the optimizer, the
schedule, the seed, ...) is refused with a `ConfigError` listing each change as ``old → new``, unless
``allow_change`` (train.py's ``--allow_config_change``); the replaced record is then kept as
``config.<k>.json``. Fields in `NEUTRAL_FIELDS` may change freely: they decide how long the run goes,
what is logged or evaluated and where, not what the steps compute. Extending ``num_train_steps`` to
continue a finished run is the common case.
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from training.errors import ConfigError

CONFIG_FILE = "config.json"

# Fields a resume may change: how long to train, how often to log, evaluate and save, where the data
# lives, and how the same steps are compiled (pmap and jit give the same parameters). Any other
# field, including one this list does not know, alters the trajectory.
NEUTRAL_FIELDS = frozenset(
  {
    "expected_top1",  # What the config's source reports: printed, never trained with.
    "data_dir",
    "cache",
    "num_train_steps",
    "log_every_steps",
    "eval_every_steps",
    "steps_per_eval",
    "eval_batch_size",
    "diagnostics_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "progress_bar",
    "max_consecutive_skips",
    "parallelism",
    "prefetch_batches",
    "preemption_sync_every_steps",
  }
)

_ABSENT = "<absent>"


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON values (tuples become lists, as they do once written)."""
  return json.loads(json.dumps(config.to_dict(), default=repr))


def changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """Field → (old, new) for every field that differs, ``"<absent>"`` where one side lacks it."""
  old, new = _flatten(recorded), _flatten(current)
  return {
    key: (old.get(key, _ABSENT), new.get(key, _ABSENT))
    for key in sorted(old.keys() | new.keys())
    if old.get(key, _ABSENT) != new.get(key, _ABSENT)
  }


def trajectory_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """The `changes` outside `NEUTRAL_FIELDS` (a field of ``model_kwargs`` counts by its full name)."""
  return {key: change for key, change in changes(recorded, current).items() if key not in NEUTRAL_FIELDS}


def _write(path: Path, values: Mapping[str, Any]) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


def check_and_record(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, resuming: bool, allow_change: bool
) -> None:
  """Compares ``config`` with ``workdir/config.json`` when ``resuming``, then records it.

  Every process reads and compares (all share the workdir); process 0 writes, after all have read.

  Args:
    config: the resolved config of this run.
    workdir: the run directory.
    resuming: whether the workdir holds checkpoints this run will resume from.
    allow_change: accept trajectory-altering changes (they are logged and the old record kept).

  Raises:
    ConfigError: on a trajectory-altering change without ``allow_change``, or an unreadable record.
  """
  path = Path(workdir) / CONFIG_FILE
  current = _as_json(config)
  recorded = None
  if resuming and path.exists():
    try:
      recorded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
      if not allow_change:
        raise ConfigError(
          f"{path} is unreadable ({error}); it records the config of the run being resumed. Restore "
          "it, or pass --allow_config_change to replace it with this config."
        ) from None
  altered = trajectory_changes(recorded, current) if isinstance(recorded, Mapping) else {}
  listing = "\n".join(f"  {key}: {old!r} → {new!r}" for key, (old, new) in altered.items())
  if altered and not allow_change:
    raise ConfigError(
      f"The run in {Path(workdir)} was made with another config ({path}); resuming with these changes "
      f"would alter its training trajectory:\n{listing}\nUse another --workdir, or pass "
      "--allow_config_change to resume anyway."
    )
  if altered:
    logging.warning("Resuming with a changed config (--allow_config_change):\n%s", listing)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("config.json read")
  if jax.process_index() != 0:
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  if altered:
    index = 1
    while path.with_name(f"config.{index}.json").exists():
      index += 1
    os.replace(path, path.with_name(f"config.{index}.json"))
  _write(path, current)
