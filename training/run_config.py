"""The resolved config of a run, recorded as ``workdir/config.json``; a resume must not change the experiment.

When the workdir already holds checkpoints, `check` compares the config (after
`training.recipes.apply_recipe`) with the recorded one: a change to a field that alters the training
trajectory (the model, the data, the batch, the optimizer, the schedule, the seed, the parallelism, ...)
is refused with a `ConfigError` listing each change as ``old → new``, and so is a record that is missing,
unreadable or not a JSON object, unless ``allow_change`` (train.py's ``--allow_config_change``). Once the
checkpoint is restored, `record` writes the config (process 0), keeping a replaced record that differs
as ``config.<k>.json``. Fields in `NEUTRAL_FIELDS` may change freely: they decide how long the run goes,
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

from training.errors import ConfigError

CONFIG_FILE = "config.json"

# Fields a resume may change: how long to train, how often to log, evaluate and save, where the data
# lives ("recipe" only fills other fields, compared resolved). Any other field, including one this list
# does not know, alters the trajectory (pmap and jit reduce in different orders: even `parallelism`).
NEUTRAL_FIELDS = frozenset(
  "recipe data_dir cache num_train_steps log_every_steps eval_every_steps steps_per_eval eval_batch_size "
  "diagnostics_every_steps checkpoint_every_steps keep_checkpoints progress_bar max_consecutive_skips "
  "prefetch_batches preemption_sync_every_steps".split()
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


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
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


def _read(path: Path) -> Any:
  """The record at ``path``: a dict, or a string saying why there is none."""
  try:
    recorded = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    return f"{'missing' if isinstance(error, FileNotFoundError) else 'unreadable'} ({error})"
  return recorded if isinstance(recorded, dict) else f"not a JSON object (a {type(recorded).__name__})"


def check(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, resuming: bool, allow_change: bool
) -> None:
  """Compares ``config`` with ``workdir/config.json`` when ``resuming`` (every process reads it).

  Raises:
    ConfigError: on a trajectory-altering change, or a record that is missing, unreadable or not a
      JSON object, without ``allow_change`` (with it, the change is logged).
  """
  path = Path(workdir) / CONFIG_FILE
  recorded = _read(path) if resuming else {}
  if isinstance(recorded, str):
    if not allow_change:
      raise ConfigError(
        f"{path} is {recorded}; it records the config of the checkpoints in {Path(workdir)}. Restore it, "
        "or pass --allow_config_change to resume with this config and record it."
      )
    logging.warning("%s is %s: resuming with this config (--allow_config_change).", path, recorded)
    return
  altered = trajectory_changes(recorded, as_json(config)) if recorded else {}
  listing = "\n".join(f"  {key}: {old!r} → {new!r}" for key, (old, new) in altered.items())
  if altered and not allow_change:
    raise ConfigError(
      f"The run in {Path(workdir)} was made with another config ({path}); resuming with these changes "
      f"would alter its training trajectory:\n{listing}\nUse another --workdir, or pass "
      "--allow_config_change to resume anyway."
    )
  if altered:
    logging.warning("Resuming with a changed config (--allow_config_change):\n%s", listing)


def record(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
  """Writes ``config`` to ``workdir/config.json`` (process 0), after every process has called `check`.

  A record it replaces that is unreadable or differs in a trajectory field is kept as ``config.<k>.json``.
  """
  if jax.process_index() != 0:
    return
  path, current = Path(workdir) / CONFIG_FILE, as_json(config)
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
