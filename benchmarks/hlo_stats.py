"""What XLA compiled: kernels per program from the optimized HLO text, and the bytes its cost model counts.

Counting rule (``count_kernels``), applied to ``compiled.as_text()`` of
``jax.jit(...).lower(...).compile()``:

- start at the ``ENTRY`` computation and count each instruction once;
- free: ``parameter``, ``constant``, ``tuple``, ``get-tuple-element``, ``bitcast``, ``after-all`` and the
  ``*-done`` / ``*-update`` halves of asynchronous pairs (the ``*-start`` half is the launch): they launch
  no work of their own;
- ``call`` (on GPU, XLA wraps runs of kernels into command buffers, replayed as CUDA graphs, and calls them):
  the instructions of the called computation are counted by the same rule, and the call itself is
  counted as one command buffer, not as a kernel;
- ``while`` and ``conditional``: the body (or every branch) is counted once by the same rule, plus one for
  the loop or branch itself: a scan of k steps launches k times the body's kernels, which this count does
  not multiply;
- everything else is one kernel: a ``fusion`` (loop, input, output or custom fusion: one kernel whatever
  it holds), a ``custom-call`` (cuBLAS, cuDNN, ...), a ``copy``, an unfused ``reduce``, ...

On GPU each counted instruction is one kernel launch (a copy may be a memcpy); on CPU it is one loop nest
or library call. Fused computations are never entered: what they hold runs inside their one kernel.
"""

import collections
import re
from typing import Any, NamedTuple

_FREE = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all"})
_NESTED = frozenset({"call", "while", "conditional"})
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_NAME = re.compile(r"%?([\w.\-]+)\s*=\s*")
_OPCODE = re.compile(r"([\w\-]+)\(")
_CALLEES = re.compile(r"\b(?:to_apply|calls|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")


class KernelCount(NamedTuple):
  """Work-launching instructions of one compiled program (the rule is the module docstring's)."""

  kernels: int  # everything that launches work, inside command buffers and loop bodies included
  fusions: int  # of which fusions
  custom_calls: int  # of which library calls (cuBLAS, cuDNN, ...)
  command_buffers: int  # ``call``s of computations (XLA:GPU's command buffers); not counted as kernels
  by_opcode: dict[str, int]  # kernels per opcode


def _skip_type(text: str) -> str:
  """Drops the leading result type: a shape like ``f32[3]{0}`` or a tuple ``(f32[], (s32[], f32[2]))``."""
  text = text.lstrip()
  if not text.startswith("("):
    return text.split(None, 1)[1] if " " in text else ""
  depth = 0
  for index, char in enumerate(text):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if depth == 0:
      return text[index + 1 :]
  return ""


def parse_computations(hlo_text: str) -> tuple[str, dict[str, list[tuple[str, list[str]]]]]:
  """The entry computation's name and, per computation, its instructions as (opcode, called computations)."""
  computations: dict[str, list[tuple[str, list[str]]]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    stripped = line.strip()
    if current is None:
      match = _COMPUTATION.match(stripped)
      if match and "=" not in stripped.split("(", 1)[0]:
        current = match.group(2)
        computations[current] = []
        entry = current if match.group(1) else entry
      continue
    if stripped == "}":
      current = None
      continue
    stripped = stripped.removeprefix("ROOT ").strip()
    name = _NAME.match(stripped)
    if not name:
      continue
    opcode = _OPCODE.match(_skip_type(stripped[name.end() :]).lstrip())
    if not opcode:
      continue
    callees = _CALLEES.findall(stripped)
    for branches in _BRANCHES.findall(stripped):
      callees += [branch.strip().lstrip("%") for branch in branches.split(",") if branch.strip()]
    computations[current].append((opcode.group(1), callees))
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return entry, computations


def count_kernels(hlo_text: str) -> KernelCount:
  """Counts the kernels of an optimized HLO module by the module docstring's rule."""
  entry, computations = parse_computations(hlo_text)
  by_opcode: collections.Counter[str] = collections.Counter()
  command_buffers = 0

  def visit(name: str) -> None:
    nonlocal command_buffers
    for opcode, callees in computations[name]:
      if opcode in _FREE or opcode.endswith(("-done", "-update")):
        continue
      if opcode in _NESTED:
        if opcode == "call":
          command_buffers += 1
        else:
          by_opcode[opcode] += 1
        for callee in callees:
          if callee in computations:
            visit(callee)
        continue
      by_opcode[opcode] += 1

  visit(entry)
  return KernelCount(
    kernels=sum(by_opcode.values()),
    fusions=by_opcode["fusion"],
    custom_calls=by_opcode["custom-call"],
    command_buffers=command_buffers,
    by_opcode=dict(sorted(by_opcode.items())),
  )


def bytes_accessed(compiled: Any) -> float | None:
  """XLA's cost-model count of bytes read and written by a compiled program (None where not reported).

  The cost model adds, for every kernel, the bytes of its operands and results: an upper estimate of the
  memory traffic (a read served from cache counts in full).
  """
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(analysis, list | tuple):
    analysis = analysis[0] if analysis else None
  if not analysis or "bytes accessed" not in analysis:
    return None
  return float(analysis["bytes accessed"])


def program_bytes(compiled: Any) -> dict[str, int] | None:
  """Device memory of a compiled program: arguments, outputs, temporaries, and their total less aliasing."""
  try:
    memory = compiled.memory_analysis()
  except Exception:  # some backends do not implement it
    return None
  if memory is None:
    return None
  sizes = {
    "arguments": int(memory.argument_size_in_bytes),
    "outputs": int(memory.output_size_in_bytes),
    "temporaries": int(memory.temp_size_in_bytes),
    "aliased": int(memory.alias_size_in_bytes),
  }
  sizes["total"] = sizes["arguments"] + sizes["outputs"] + sizes["temporaries"] - sizes["aliased"]
  return sizes
