"""ResNet v1.5 (ImageNet) and CIFAR-style ResNets, all partials of one block-based builder.

Follows the Flax ImageNet example: ``ResNet`` takes a residual block class and the number of blocks
per stage, and injects ``conv`` and ``norm`` (through ``functools.partial``) into a stem and the
blocks. Version 1.5 puts the downsampling stride of a bottleneck block on its 3x3 convolution (v1
put it on the first 1x1), as in torchvision, MLPerf and the Flax example; it does not change the
parameter count. Shortcuts that change shape are 1x1 projections followed by batch norm (option B of
He et al.), also in the CIFAR nets.

Parameter counts with 1000 classes: ResNet-18 11,689,512; ResNet-34 21,797,672; ResNet-50
25,557,032; ResNet-101 44,549,160; ResNet-152 60,192,808. ResNet-20 with 10 classes: 272,474 (the
paper's parameter-free option-A shortcuts would give 269,722).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from models import layers

ModuleDef = Any


class ResNetBlock(nn.Module):
  """Basic residual block: two 3x3 convolutions (ResNet-18/34 and the CIFAR ResNets).

  Attributes:
    filters: the number of output channels of the 3x3 convolutions.
    conv: the convolution constructor (no bias, compute dtype set).
    norm: the batch-norm constructor (mode, momentum, epsilon, axis name set).
    act: the activation.
    strides: the downsampling strides (on a 3x3 convolution and on the projection shortcut).
    zero_init_residual: whether the last batch norm's scale starts at zero, so that the block starts
      as the identity (Goyal et al., 2017).
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  strides: tuple[int, int] = (1, 1)
  zero_init_residual: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
    y = self.conv(self.filters, (3, 3))(y)
    return self.merge(x, y)

  def merge(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """act(shortcut(x) + norm(y)): the last batch norm, the shortcut and the residual sum."""
    scale_init = nn.initializers.zeros_init() if self.zero_init_residual else nn.initializers.ones_init()
    y = self.norm(scale_init=scale_init)(y)
    if x.shape != y.shape:
      x = self.conv(y.shape[-1], (1, 1), self.strides, name="conv_proj")(x)
      x = self.norm(name="norm_proj")(x)
    return self.act(x + y)


class BottleneckResNetBlock(ResNetBlock):
  """Bottleneck block (v1.5): 1x1 reduce, 3x3 with the stride, 1x1 expand by 4.

  Attributes are those of ``ResNetBlock``; ``filters`` is the width of the 3x3 convolution and the
  block outputs ``4 * filters`` channels.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.act(self.norm()(self.conv(self.filters, (1, 1))(x)))
    y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(y)))
    y = self.conv(self.filters * 4, (1, 1))(y)
    return self.merge(x, y)


class CifarStem(nn.Module):
  """3x3 convolution, batch norm and activation at full resolution (He et al., CIFAR-10).

  Attributes:
    filters: the number of output channels.
    conv: the convolution constructor.
    norm: the batch-norm constructor.
    act: the activation.
  """

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(self.filters, (3, 3), name="conv_init")(x)
    return self.act(self.norm(name="bn_init")(x))


class ImageNetStem(CifarStem):
  """7x7/2 convolution, batch norm, activation and 3x3/2 max-pooling: 224 → 56.

  Attributes are those of ``CifarStem``.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(self.filters, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv_init")(x)
    x = self.act(self.norm(name="bn_init")(x))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")


class ResNet(layers.CheckedModule):
  """Residual network: a stem, stages of residual blocks, global average pooling, a dense layer.

  Stage i has ``stage_sizes[i]`` blocks of width ``num_filters * 2**i``; the first block of every
  stage but the first halves the resolution. Convolutions have no bias (batch norm follows each);
  parameters are float32, activations are computed in ``dtype``, the logits are returned in
  float32. Statistics live in the ``batch_stats`` collection: call with ``mutable=["batch_stats"]``
  when ``train=True``; set ``axis_name`` to the ``pmap``/``shard_map`` axis to synchronise them.

  Attributes:
    stage_sizes: the number of blocks in each stage.
    block_cls: ``ResNetBlock`` or ``BottleneckResNetBlock``.
    num_classes: the number of output logits.
    num_filters: the width of the stem and of the first stage.
    stem_cls: ``ImageNetStem`` or ``CifarStem``.
    dtype: the compute dtype (for example ``jnp.bfloat16``).
    axis_name: the device axis over which batch statistics are averaged (None: per device).
    bn_momentum: the decay of the running averages (Flax convention: new = m·old + (1-m)·batch).
    bn_epsilon: the constant added to the variance.
    zero_init_residual: whether the last batch-norm scale of each block starts at zero (the
      large-batch recipe of Goyal et al.; the Flax example does the same). False gives torchvision's
      initialisation.
    act: the activation.

  References:
    He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
    https://arxiv.org/abs/1512.03385
    Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017,
    https://arxiv.org/abs/1706.02677
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int
  num_filters: int = 64
  stem_cls: ModuleDef = ImageNetStem
  dtype: Any = jnp.float32
  axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  zero_init_residual: bool = True
  act: Callable[[jax.Array], jax.Array] = nn.relu

  FIELD_RANGES: ClassVar[layers.Ranges] = {
    "num_classes": layers.POSITIVE,
    "num_filters": layers.POSITIVE,
    "bn_momentum": layers.UNIT_INTERVAL,
    "bn_epsilon": layers.POSITIVE,
  }

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      axis_name=self.axis_name,
    )
    x = self.stem_cls(self.num_filters, conv=conv, norm=norm, act=self.act, name="stem")(x)
    for i, block_size in enumerate(self.stage_sizes):
      for j in range(block_size):
        x = self.block_cls(
          self.num_filters * 2**i,
          conv=conv,
          norm=norm,
          act=self.act,
          strides=(2, 2) if i > 0 and j == 0 else (1, 1),
          zero_init_residual=self.zero_init_residual,
        )(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return jnp.asarray(x, jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=ResNetBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckResNetBlock)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block_cls=BottleneckResNetBlock)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block_cls=BottleneckResNetBlock)
# He et al.'s CIFAR-10 ResNet-20: 3 stages of 3 basic blocks, 16/32/64 channels, 32x32 → 8x8.
ResNet20 = functools.partial(
  ResNet, stage_sizes=(3, 3, 3), block_cls=ResNetBlock, num_filters=16, stem_cls=CifarStem
)
