"""Flax (linen) models of the LARS paper and small variants that train on a CPU.

``get_model(name, num_classes=...)`` builds one by name; ``MODELS`` lists the names. Every model is
called as ``model.apply(variables, x, train=...)`` and returns float32 logits; batch-norm models keep
their statistics in ``batch_stats``, dropout models need ``rngs={"dropout": key}`` when training.
"""

from models.alexnet import (
  AlexNet,
  AlexNet1D,
  AlexNet1DBN,
  AlexNetBN,
  ConvLayer,
  SmallAlexNet,
  SmallAlexNetBN,
)
from models.layers import LocalResponseNorm
from models.registry import MODELS, get_model
from models.resnet import (
  BottleneckResNetBlock,
  CifarStem,
  ImageNetStem,
  ResNet,
  ResNet18,
  ResNet20,
  ResNet34,
  ResNet50,
  ResNet101,
  ResNet152,
  ResNetBlock,
)

__all__ = [
  "MODELS",
  "AlexNet",
  "AlexNet1D",
  "AlexNet1DBN",
  "AlexNetBN",
  "BottleneckResNetBlock",
  "CifarStem",
  "ConvLayer",
  "ImageNetStem",
  "LocalResponseNorm",
  "ResNet",
  "ResNet18",
  "ResNet20",
  "ResNet34",
  "ResNet50",
  "ResNet101",
  "ResNet152",
  "ResNetBlock",
  "SmallAlexNet",
  "SmallAlexNetBN",
  "get_model",
]
