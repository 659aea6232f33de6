"""train.py's command line: ``--help`` in 80 columns, every config field in it; user errors in one line."""

import ast
import difflib
import io
import os
import re
import runpy
import sys
import textwrap
import tokenize
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import ml_collections
from absl import flags

from training.errors import ExitCode

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.py"
_HELP_ARGUMENTS = {"-h", "-?", "-help", "--help", "-helpshort", "--helpshort"}
_WIDTH = 80
_SEE_HELP = "(python train.py --help lists the flags and config fields.)"
_CONFIG_HELP = "The config file; ARG, after a colon, goes to its get_config() (most take a batch size)."


def _load_config(spec: str) -> ml_collections.ConfigDict:
  path, *args = spec.split(":", 1)  # FILE[:ARG]
  return runpy.run_path(path)["get_config"](*args)


def field_meanings(path: str | os.PathLike = DEFAULT_CONFIG) -> dict[str, tuple[str, str]]:
  """``{field: (section, meaning)}``: the comment ending the line of ``config.FIELD = ...`` (or of a key of
  a dict assigned to one: ``FIELD.KEY``), under the last one-line comment above it (up to a ``.:(``)."""
  source = Path(path).read_text()
  tokens = tokenize.generate_tokens(io.StringIO(source).readline)
  comments = {token.start[0]: token.string.lstrip("# ") for token in tokens if token.type == tokenize.COMMENT}
  solo = {n for n, line in enumerate(source.splitlines(), 1) if line.lstrip().startswith("#")} | {-1}
  heads = {n: re.split(r" ?[.:(]", comments.get(n, "Other"))[0] for n in solo if not {n - 1, n + 1} & solo}
  fields = {}
  for node in ast.walk(ast.parse(source)):
    target = node.targets[0] if isinstance(node, ast.Assign) else None
    if isinstance(target, ast.Attribute) and getattr(target.value, "id", None) == "config":
      fields[target.attr] = node
      for inner in ast.walk(node.value):
        for key, value in zip(getattr(inner, "keys", []), getattr(inner, "values", []), strict=True):
          fields[f"{target.attr}.{getattr(key, 'value', '')}"] = value
  ordered = sorted(fields.items(), key=lambda item: item[1].lineno)
  return {
    name: (heads[max(n for n in heads if n < node.lineno)], comments.get(node.end_lineno, ""))
    for name, node in ordered
  }


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
  """Every leaf field of ``config`` by its dotted path (an empty dict is a leaf)."""
  leaves = {}
  for key, value in config.items():
    nested = isinstance(value, ml_collections.ConfigDict) and value
    leaves |= _flat(value, f"{prefix}{key}.") if nested else {f"{prefix}{key}": value}
  return leaves


def _wrap(text: str, indent: int = 0) -> list[str]:
  more = " " * (indent + len(text) - len(text.lstrip()) + (4 if text.startswith(" ") else 0))
  return textwrap.wrap(text, _WIDTH, initial_indent=" " * indent, subsequent_indent=more) or [""]


def _entry(flag: str, meaning: str, indent: int) -> list[str]:
  return [" " * indent + textwrap.shorten(flag, 70, placeholder=" ..."), *_wrap(meaning, indent + 4)]


def help_text(usage: str, main_flags: list[flags.Flag]) -> str:
  """The text of ``python train.py --help``: ``usage``, train.py's flags, every config field."""
  paragraphs = textwrap.dedent(usage).strip().split("\n\n")  # prose refilled; indented lines (commands) kept
  rows = [r for p in paragraphs for r in [*(p.splitlines() if "\n " in p else [" ".join(p.split())]), ""]]
  lines = [line for row in rows for line in _wrap(row)]
  lines += ["flags:", *_entry("--config=FILE[:ARG] (default: configs/default.py)", _CONFIG_HELP, 2)]
  for flag in main_flags:
    lines += _entry(f"--{flag.name}={flag.default!r}", flag.help, 2)
  lines += ["", "config fields (--config.FIELD=VALUE), as configs/default.py sets them:"]
  defaults, meanings, section = _flat(_load_config(os.fspath(DEFAULT_CONFIG))), field_meanings(), None
  for name in [*(name for name in meanings if name in defaults), *sorted(set(defaults) - set(meanings))]:
    where, meaning = meanings.get(name, ("Other", ""))
    if where != section:
      lines += ["", f"  {where}:"]
      section = where
    lines += _entry(f"--config.{name}={defaults[name]!r}", meaning, 4)
  return "\n".join([*lines, "", "Try --helpfull for absl's and JAX's own flags.", ""])


def fail(message: str) -> NoReturn:
  """Prints a user error as one message on stderr and exits with status 2 (`ExitCode.USAGE`)."""
  print(f"train.py: error: {message}\n{_SEE_HELP}", file=sys.stderr)
  sys.exit(ExitCode.USAGE)


def _config_argument(argv: list[str]) -> str:
  """The ``--config`` value of ``argv`` (FILE[:ARG]), or the default config file."""
  for arg, following in zip(argv, [*argv[1:], None], strict=True):
    name, equals, value = arg.partition("=")
    if name in ("--config", "-config"):
      return value if equals else following or ""
  return os.fspath(DEFAULT_CONFIG)


def _unknown_field(argv: list[str]) -> str | None:
  """The message for the first ``--config.<path>`` of ``argv`` that names no field, or None."""
  fields = _flat(_load_config(_config_argument(argv)))
  known = {".".join(field.split(".")[: i + 1]) for field in fields for i in range(field.count(".") + 1)}
  for arg in argv:
    name = arg.partition("=")[0].lstrip("-").removeprefix("no").removeprefix("config.")
    if arg.lstrip("-").removeprefix("no").startswith("config.") and name not in known:
      close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
      hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
      return f"{arg}: the config has no field {name!r}.{hint}"
  return None


def parse_flags(argv: list[str], *, define_config: Callable[[list[str]], object], usage: str) -> list[str]:
  """absl's ``flags_parser`` for train.py: ``--help`` above ``usage`` (exit 0), user errors (exit 2).

  ``define_config(argv)`` defines ``--config``: here, not at import, as ml_collections applies the overrides
  while the flag is defined and an unknown field must be reported, not raised at import.
  """
  before_terminator = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
  if any(arg in _HELP_ARGUMENTS or arg.startswith("--help=") for arg in before_terminator):
    sys.stdout.write(help_text(usage, flags.FLAGS.flags_by_module_dict().get(argv[0], [])))
    sys.exit(ExitCode.FINISHED)
  try:
    define_config(argv)
    remaining = flags.FLAGS(argv)
    config = flags.FLAGS["config"].value
    if not isinstance(config, ml_collections.ConfigDict):  # ml_collections defers a missing file's error.
      config.keys()
  except (flags.Error, OSError) as error:
    cause = error  # what a value's parser or the config file raised, not ml_collections' wrapping text
    while cause.__cause__ or cause.__context__:
      cause = cause.__cause__ or cause.__context__
    if isinstance(error, OSError):  # a config file that cannot be read: the last of the paths tried
      fail(f"--config={_config_argument(argv)}: {str(cause).splitlines()[-1].strip()}")
    flag = str(error).removeprefix("flag ").split(": ")[0]  # absl: "flag --NAME=VALUE: REASON"
    fail(f"{flag}: {type(cause).__name__}: {cause}" if cause is not error else str(error))
  except (AttributeError, KeyError):
    if (message := _unknown_field(argv)) is None:
      raise
    fail(message)
  return remaining
