"""train.py's command line: ``--help`` with every config field, and user errors as one message (exit 2).

``--help`` lists train.py's flags and every ``--config.<field>`` with its default and meaning, read
from configs/default.py: the comment that ends a field's line there is its help (one source). Flag and
config-file errors that absl and ml_collections raise while parsing (an unknown field, a value of the
wrong type, a config file that cannot be loaded) and the `ConfigError` of the config checks are printed
as one message on stderr, with exit status 2 and no traceback; anything else is a bug and keeps its
traceback.
"""

import ast
import difflib
import importlib
import importlib.util
import io
import os
import re
import sys
import textwrap
import tokenize
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, NoReturn

import ml_collections
from absl import flags

from training.errors import ExitCode

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.py"
_HELP_ARGUMENTS = ("-h", "-?", "-help", "--help", "-helpshort", "--helpshort")
_HELP_WIDTH = 100
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


class ConfigField(NamedTuple):
  """One field of configs/default.py, as ``--help`` shows it."""

  name: str
  default: object
  meaning: str
  section: str


def config_fields(path: str | os.PathLike = DEFAULT_CONFIG) -> list[ConfigField]:
  """The fields ``get_config()`` of ``path`` assigns, in order, with their values and line comments.

  A field's meaning is the comment that ends its assignment line; its section is the last comment
  line standing alone above it (up to its first ``.`` or ``:``).
  """
  source = Path(path).read_text()
  comments = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      comments[token.start[0]] = token.string.lstrip("#").strip()
  function = next(
    node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef) and node.name == "get_config"
  )
  assigned = {
    statement.end_lineno: statement.targets[0].attr
    for statement in function.body
    if isinstance(statement, ast.Assign)
    and isinstance(statement.targets[0], ast.Attribute)
    and isinstance(statement.targets[0].value, ast.Name)
    and statement.targets[0].value.id == "config"
  }
  module = _load_module(path)
  values = module.get_config()
  fields, section = [], ""
  for line in range(1, len(source.splitlines()) + 1):
    if line in assigned:
      name = assigned[line]
      fields.append(ConfigField(name, values[name], comments.get(line, ""), section))
    elif line in comments and source.splitlines()[line - 1].strip().startswith("#"):
      section = re.split(r"[.:](?:\s|$)", comments[line], maxsplit=1)[0]
  return fields


def _load_module(path: str | os.PathLike):
  path = Path(path).resolve()
  if path == DEFAULT_CONFIG:
    return importlib.import_module("configs.default")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _show(value: object) -> str:
  if isinstance(value, ml_collections.ConfigDict):
    return "{}" if not value else repr(value.to_dict())
  return repr(value)


def help_text(usage: str, flag_help: str) -> str:
  """The text of ``python train.py --help``: ``usage`` (the docstring), the flags, every config field."""
  fields = config_fields()
  width = max(len(f"--config.{field.name}={_show(field.default)}") for field in fields)
  lines = [
    usage.rstrip(),
    "",
    "flags:",
    "  --config=FILE[:ARG]: the config file (default configs/default.py); ARG, after a colon, is passed to",
    "    its get_config(), e.g. the global batch size: --config=configs/resnet50_lars.py:8192.",
    flag_help.rstrip(),
    "",
    "config fields: --config.FIELD=VALUE overrides one (after --config=FILE, if given). Defaults are",
    "configs/default.py's; the other configs start from it and change a few (see their docstrings).",
  ]
  section = None
  for field in fields:
    if field.section != section:
      section = field.section
      lines += ["", f"  {section}:"]
    flag = f"--config.{field.name}={_show(field.default)}"
    lines += textwrap.wrap(
      field.meaning,
      _HELP_WIDTH,
      initial_indent=f"    {flag:<{width}}  ",
      subsequent_indent=" " * (width + 6),
      break_on_hyphens=False,
    )
  lines += ["", "Try --helpfull for absl's and JAX's own flags.", ""]
  return "\n".join(lines)


def fail(message: str) -> NoReturn:
  """Prints a user error as one message on stderr and exits with status 2 (`ExitCode.USAGE`)."""
  sys.stderr.write(
    f"train.py: error: {message}\n(python train.py --help lists the flags and config fields.)\n"
  )
  sys.stderr.flush()
  sys.exit(ExitCode.USAGE)


def _config_argument(argv: Sequence[str]) -> str:
  """The ``--config`` value of ``argv`` (FILE[:ARG]), or the default config file."""
  for index, arg in enumerate(argv):
    match = re.match(r"^--?config(?:=(.*))?$", arg)
    if match:
      if match.group(1) is not None:
        return match.group(1)
      if index + 1 < len(argv):
        return argv[index + 1]
  return os.fspath(DEFAULT_CONFIG)


def unknown_field_message(argv: Sequence[str]) -> str | None:
  """The message for the first ``--config.<path>`` of ``argv`` that names no field, or None."""
  path, *args = _config_argument(argv).split(":", 1)
  config = _load_module(path).get_config(*args)
  for arg in argv:
    match = _OVERRIDE.match(arg)
    if not match:
      continue
    node, walked = config, []
    for part in match.group(1).split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        names = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        where = "config." + ".".join(walked) if walked else "the config"
        close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(name) for name in close)}?" if close else ""
        listed = "" if close else f" Its fields: {', '.join(names) or 'none'}."
        return f"{arg}: {where} has no field {part!r}.{hint}{listed}"
      node, walked = node[part], [*walked, part]
  return None


def _flag_error_message(error: flags.Error, argv: Sequence[str]) -> str:
  """absl's message, shortened: a config file's traceback becomes its last line."""
  message = str(error).strip()
  if "Error whilst parsing config file" in message:
    last = [line for line in message.splitlines() if line.strip()][-1].strip()
    return f"--config={_config_argument(argv)}: could not load the config: {last}"
  match = re.match(r"^flag (--config\.([\w.]+)=.*?): (.*)$", message, flags=re.DOTALL)
  if match:
    flag, path, reason = match.groups()
    default = _default_of(path)
    expected = "" if default is None else f" (its default: {default})"
    return f"{flag}: {reason}{expected}"
  return message.removeprefix("flag ")


def _default_of(path: str) -> str | None:
  try:
    node = importlib.import_module("configs.default").get_config()
    for part in path.split("."):
      node = node[part]
  except (KeyError, AttributeError):
    return None
  return f"{node!r}, {type(node).__name__}" if node is not None else None


def parse_flags(argv: list[str], *, define_config: Callable[[list[str]], object], usage: str) -> list[str]:
  """absl's ``flags_parser`` for train.py: ``--help`` (exit 0) and user errors as one message (exit 2).

  Args:
    argv: the command line, program name first.
    define_config: defines the ``--config`` flag (`config_flags.DEFINE_config_file`) for ``argv``. It is
      called here, not at import, because ml_collections loads the default config and its overrides
      while the flag is defined: an unknown field must be reported, not raised at import.
    usage: the text above the flags in ``--help`` (train.py's docstring).

  Returns:
    The arguments left after the flags, as absl's own parser returns them.
  """
  before_terminator = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
  if any(arg in _HELP_ARGUMENTS or arg.startswith("--help=") for arg in before_terminator):
    sys.stdout.write(help_text(usage, flags.FLAGS.main_module_help()))
    sys.exit(ExitCode.FINISHED)
  try:
    define_config(argv)
    remaining = flags.FLAGS(argv)
    config = flags.FLAGS["config"].value
    if not isinstance(config, ml_collections.ConfigDict):  # ml_collections defers a missing file's error.
      config.keys()
  except flags.Error as error:
    fail(_flag_error_message(error, argv))
  except OSError as error:
    fail(f"--config={_config_argument(argv)}: could not load the config: {error}")
  except (AttributeError, KeyError):
    message = unknown_field_message(argv)
    if message is None:
      raise
    fail(message)
  return remaining
