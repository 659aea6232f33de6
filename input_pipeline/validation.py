"""The argument check of the input pipelines: integers, as every entry point takes them."""

import numbers


def check_int(value: object, argument: str, *, minimum: int, allow_none: bool = False) -> None:
  """Raises ValueError naming ``argument`` unless ``value`` is an integer >= ``minimum`` (or None if allowed).

  Booleans are not integers here (``True`` is not a batch size).
  """
  if allow_none and value is None:
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    allowed = f"None or {kind}" if allow_none else kind
    raise ValueError(f"`{argument}` must be {allowed}, got {value!r}.")
