"""The argument checks of the input pipelines and the error they raise."""

import numbers


class InputError(ValueError):
  """A data argument a user must fix; ``argument`` is its name (train.py's config field of that name)."""

  def __init__(self, argument: str, message: str):
    super().__init__(message)
    self.argument = argument


def check_int(value: object, argument: str, *, minimum: int, allow_none: bool = False) -> None:
  """Raises `InputError` unless ``value`` is an int >= ``minimum`` (or allowed None); bools are not ints."""
  if allow_none and value is None:
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    allowed = f"an integer >= {minimum}" + (" or None" if allow_none else "")
    raise InputError(argument, f"`{argument}` must be {allowed}, got {value!r}.")
