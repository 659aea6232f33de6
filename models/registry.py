"""Models by name, so that a config can say ``model="resnet50"``."""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from flax import linen as nn

from models import alexnet, resnet

# Each entry builds a module from keyword arguments (``num_classes`` at least). The comment gives
# the input the model is meant for.
MODELS: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(
  {
    "alexnet": alexnet.AlexNet,  # 227x227x3
    "alexnet_bn": alexnet.AlexNetBN,  # 227x227x3
    "resnet18": resnet.ResNet18,  # 224x224x3
    "resnet34": resnet.ResNet34,  # 224x224x3
    "resnet50": resnet.ResNet50,  # 224x224x3
    "resnet101": resnet.ResNet101,  # 224x224x3
    "resnet152": resnet.ResNet152,  # 224x224x3
    "resnet20": resnet.ResNet20,  # 32x32x3 (any size divisible by 4)
    "small_alexnet": alexnet.SmallAlexNet,  # 8x8 to 32x32 images
    "small_alexnet_bn": alexnet.SmallAlexNetBN,  # 8x8 to 32x32 images
    "conv1d": alexnet.AlexNet1D,  # MNIST-1D signals, (length 40, 1 channel)
    "conv1d_bn": alexnet.AlexNet1DBN,  # MNIST-1D signals, (length 40, 1 channel)
  }
)


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds the model registered as ``name``.

  Args:
    name: a key of ``MODELS``.
    **kwargs: the module's fields, for example ``num_classes=10, dtype=jnp.bfloat16``.

  Returns:
    The Flax module (not yet initialised).

  Raises:
    ValueError: if ``name`` is not registered.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = get_model("small_alexnet_bn", num_classes=10)
    >>> init = jax.jit(model.init, static_argnames="train")
    >>> variables = init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
    >>> sorted(variables)
    ['batch_stats', 'params']
    >>> model.apply(variables, jnp.zeros((2, 8, 8, 1)), train=False).shape
    (2, 10)
  """
  if name not in MODELS:
    raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}.")
  return MODELS[name](**kwargs)


# Fields a training program derives from the data set and the devices rather than from a config.
DERIVED_FIELDS = ("num_classes", "dtype", "axis_name")


def settable_fields(name: str) -> list[str]:
  """The fields of model ``name`` a config may set: the module's, less `DERIVED_FIELDS`."""
  builder = MODELS[name]
  while isinstance(builder, functools.partial):
    builder = builder.func
  names = {field.name for field in dataclasses.fields(builder)}  # type: ignore[arg-type]
  return sorted(names - set(DERIVED_FIELDS) - {"parent", "name"})
