"""The argument checks of the input pipelines and the error they raise."""

import numbers


class InputError(ValueError):
  """A data argument a user must fix; ``argument`` is its name (train.py's config field of that name)."""

  def __init__(self, argument: str, message: str):
    super().__init__(message)
    self.argument = argument


def check_int(value: object, argument: str, *, minimum: int) -> None:
  """Raises `InputError` naming ``argument`` unless ``value`` is an int >= ``minimum`` (not a bool)."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise InputError(argument, f"`{argument}` must be an integer >= {minimum}, got {value!r}.")
