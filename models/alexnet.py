"""AlexNet and AlexNet-BN as in the LARS paper, and smaller nets from the same builder.

The LARS paper's central contrast is AlexNet (local response normalisation, no batch norm), whose
large-batch accuracy collapses without LARS, against AlexNet-BN (batch norm in place of LRN), which
scales much further. Both are built here by one builder, ``_AlexNetBase``: a stack of convolutions
described by ``ConvLayer`` entries, then hidden dense layers with dropout, then the classifier. The
two subclasses differ only in how each hidden layer is normalised:

* ``AlexNet``:   conv (with bias) → ReLU → [LRN] → [max-pool]; dense (with bias) → ReLU → dropout.
* ``AlexNetBN``: conv (no bias) → BN → ReLU → [max-pool]; dense (no bias) → BN → ReLU → dropout.
  A bias in front of batch norm would be cancelled by the mean subtraction, so those layers drop it
  (the BN offset plays its part).

The defaults are the paper's ImageNet network. Smaller nets (``SmallAlexNet``, ``AlexNet1D`` and their
BN twins) are partials of the same classes with a shorter layer list.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from models.layers import (
  NON_NEGATIVE,
  POSITIVE,
  POSITIVE_ODD,
  UNIT_INTERVAL,
  CheckedModule,
  LocalResponseNorm,
  Ranges,
)

# He et al. (2015) fan-in scaling: every hidden layer is followed by a ReLU.
_RELU_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


@dataclasses.dataclass(frozen=True)
class ConvLayer:
  """One convolution of an AlexNet-like feature extractor.

  Attributes:
    features: the number of output channels.
    kernel_size: the window, one entry per spatial axis ((11, 11) for images, (5,) for signals).
    strides: the convolution strides.
    padding: "SAME", "VALID" or explicit padding, as for ``flax.linen.Conv``.
    grouped: whether the layer is split into two groups (Caffe's ``group: 2``) when the model's
      ``grouped`` field is True.
    lrn: whether local response normalisation follows the ReLU (models without batch norm only).
    pool: whether the model's overlapping max-pooling follows the layer.
  """

  features: int
  kernel_size: tuple[int, ...]
  strides: int | tuple[int, ...] = 1
  padding: str | Sequence[tuple[int, int]] = "SAME"
  grouped: bool = False
  lrn: bool = False
  pool: bool = False


# The Caffe reference AlexNet (bvlc_alexnet) on 227x227x3 inputs: 55 → 27 → 13 → 6 after the pools.
ALEXNET_LAYERS = (
  ConvLayer(96, (11, 11), strides=4, padding="VALID", lrn=True, pool=True),
  ConvLayer(256, (5, 5), grouped=True, lrn=True, pool=True),
  ConvLayer(384, (3, 3)),
  ConvLayer(384, (3, 3), grouped=True),
  ConvLayer(256, (3, 3), grouped=True, pool=True),
)

# AlexNet's pattern (conv-LRN-pool, conv-LRN, ..., conv-pool) with 3x3 kernels, for 8x8 to 32x32
# images: 8 → 4 → 2 after the (SAME-padded, overlapping) pools.
SMALL_ALEXNET_LAYERS = (
  ConvLayer(32, (3, 3), lrn=True, pool=True),
  ConvLayer(64, (3, 3), lrn=True),
  ConvLayer(128, (3, 3), pool=True),
)

# For MNIST-1D signals of shape (length 40, 1 channel): 40 → 20 → 10 after the pools.
ALEXNET1D_LAYERS = (
  ConvLayer(32, (5,)),
  ConvLayer(32, (5,), pool=True),
  ConvLayer(64, (3,), pool=True),
)


class _AlexNetBase(CheckedModule):
  """Convolutions, hidden dense layers with dropout, then a linear classifier.

  Layers are named as in Caffe (``conv1`` ... ``conv5``, ``fc6``, ``fc7``, ``fc8`` for AlexNet), so
  per-layer diagnostics read like the paper's. Parameters are float32 (``kernel``, ``bias``,
  ``scale``); activations are computed in ``dtype``; the logits are returned in float32.

  Attributes:
    num_classes: the number of output logits.
    layers: the convolutions, in order.
    hidden_features: the widths of the hidden dense layers (each followed by dropout).
    grouped: whether layers marked ``grouped`` use two groups, as in Caffe's AlexNet.
    pool_window: the max-pooling window (AlexNet's pooling overlaps: window 3, stride 2).
    pool_strides: the max-pooling strides.
    pool_padding: the max-pooling padding.
    dropout_rate: the dropout probability after each hidden dense layer.
    dtype: the compute dtype (for example ``jnp.bfloat16``).
  """

  num_classes: int
  layers: Sequence[ConvLayer] = ALEXNET_LAYERS
  hidden_features: Sequence[int] = (4096, 4096)
  grouped: bool = True
  pool_window: tuple[int, ...] = (3, 3)
  pool_strides: tuple[int, ...] = (2, 2)
  pool_padding: str = "VALID"
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  # Whether convolutions and hidden dense layers carry their own bias.
  use_bias: ClassVar[bool] = True
  FIELD_RANGES: ClassVar[Ranges] = {"num_classes": POSITIVE, "dropout_rate": UNIT_INTERVAL}

  def normalize_and_activate(self, x: jax.Array, index: int, lrn: bool, train: bool) -> jax.Array:
    """Normalises and rectifies the output of layer ``index`` (1-based)."""
    raise NotImplementedError

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for index, layer in enumerate(self.layers, start=1):
      x = nn.Conv(
        layer.features,
        layer.kernel_size,
        layer.strides,
        layer.padding,
        feature_group_count=2 if self.grouped and layer.grouped else 1,
        use_bias=self.use_bias,
        kernel_init=_RELU_INIT,
        dtype=self.dtype,
        name=f"conv{index}",
      )(x)
      x = self.normalize_and_activate(x, index, layer.lrn, train)
      if layer.pool:
        x = nn.max_pool(x, self.pool_window, self.pool_strides, self.pool_padding)
    x = x.reshape((x.shape[0], -1))
    for index, features in enumerate(self.hidden_features, start=len(self.layers) + 1):
      x = nn.Dense(
        features, use_bias=self.use_bias, kernel_init=_RELU_INIT, dtype=self.dtype, name=f"fc{index}"
      )(x)
      x = self.normalize_and_activate(x, index, False, train)
      x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"dropout{index}")(x)
    depth = len(self.layers) + len(self.hidden_features) + 1
    x = nn.Dense(self.num_classes, dtype=self.dtype, name=f"fc{depth}")(x)
    return jnp.asarray(x, jnp.float32)


class AlexNet(_AlexNetBase):
  """AlexNet without batch norm: the Caffe reference network the LARS paper trained.

  With the defaults this is ``bvlc_alexnet``: five convolutions (11x11/4 VALID with 96 channels,
  5x5 with 256, 3x3 with 384, 384 and 256), ReLU, local response normalisation after conv1 and
  conv2 (Caffe convention, see ``LocalResponseNorm``), overlapping 3x3/2 max-pooling after conv1,
  conv2 and conv5, then fc6 and fc7 with 4096 units and dropout 0.5, and fc8. The input is
  227x227x3 (at 224x224 the VALID conv1 gives 5x5 instead of 6x6 maps before fc6, which changes
  fc6's fan-in). By default conv2, conv4 and conv5 are split into two groups as in Caffe
  (``grouped=True``): 60,965,224 parameters with 1000 classes, 62,378,344 with ``grouped=False``.
  Hidden-layer weights use He-normal initialisation (Caffe's fixed Gaussian of std 0.01 trains
  poorly from scratch without careful bias constants), the classifier Flax's LeCun normal; biases
  start at zero.

  Call as ``model.apply(variables, images, train=True, rngs={"dropout": key})``; under ``pmap``,
  give each device its own key (``jax.random.fold_in(key, jax.lax.axis_index(axis))``).

  Attributes:
    lrn_size: n, the LRN window in channels.
    lrn_alpha: α, Caffe's LRN scale (divided by n).
    lrn_beta: β, the LRN exponent.
    lrn_k: k, the LRN additive constant.

  References:
    Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional Neural
    Networks", NeurIPS 2012.
    You, Gitman and Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
    https://arxiv.org/abs/1708.03888
  """

  lrn_size: int = 5
  lrn_alpha: float = 1e-4
  lrn_beta: float = 0.75
  lrn_k: float = 1.0

  FIELD_RANGES: ClassVar[Ranges] = {
    **_AlexNetBase.FIELD_RANGES,
    "lrn_size": POSITIVE_ODD,
    "lrn_alpha": NON_NEGATIVE,
    "lrn_beta": NON_NEGATIVE,
    "lrn_k": POSITIVE,
  }

  def normalize_and_activate(self, x: jax.Array, index: int, lrn: bool, train: bool) -> jax.Array:
    """ReLU, then LRN where the layer asks for it."""
    del train  # LRN behaves the same in training and evaluation.
    x = nn.relu(x)
    if lrn:
      x = LocalResponseNorm(
        self.lrn_size, self.lrn_alpha, self.lrn_beta, self.lrn_k, self.dtype, name=f"norm{index}"
      )(x)
    return x


class AlexNetBN(_AlexNetBase):
  """AlexNet-BN: AlexNet with batch norm after every convolution and hidden dense layer.

  As in the LARS paper, batch norm replaces local response normalisation; it sits between each
  layer and its ReLU, and those layers have no bias of their own (the BN offset replaces it). The
  rest (layers, grouping, pooling, dropout) is ``AlexNet``'s; the paper does not say whether its
  AlexNet-BN kept Caffe's groups, and ``grouped=True`` is the default here too: 60,974,792
  parameters with 1000 classes at 227x227x3 (62,387,912 ungrouped). Statistics live in the
  ``batch_stats`` collection: call with ``mutable=["batch_stats"]`` when ``train=True``. Set
  ``axis_name`` to the ``pmap``/``shard_map`` axis to compute them over the global batch.

  Attributes:
    axis_name: the device axis over which batch statistics are averaged (None: per device).
    bn_momentum: the decay of the running averages (Flax convention: new = m·old + (1-m)·batch).
    bn_epsilon: the constant added to the variance.

  References:
    Ioffe and Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift", ICML 2015.
    You, Gitman and Ginsburg, "Large Batch Training of Convolutional Networks", 2017,
    https://arxiv.org/abs/1708.03888
  """

  axis_name: str | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5

  use_bias: ClassVar[bool] = False
  FIELD_RANGES: ClassVar[Ranges] = {
    **_AlexNetBase.FIELD_RANGES,
    "bn_momentum": UNIT_INTERVAL,
    "bn_epsilon": POSITIVE,
  }

  def normalize_and_activate(self, x: jax.Array, index: int, lrn: bool, train: bool) -> jax.Array:
    """Batch norm, then ReLU (``lrn`` is ignored: BN takes its place)."""
    del lrn
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      axis_name=self.axis_name,
      name=f"bn{index}",
    )(x)
    return nn.relu(x)


_SMALL = dict(layers=SMALL_ALEXNET_LAYERS, hidden_features=(256, 256), pool_padding="SAME")
_ALEXNET1D = dict(
  layers=ALEXNET1D_LAYERS,
  hidden_features=(128,),
  pool_window=(3,),
  pool_strides=(2,),
  pool_padding="SAME",
  dropout_rate=0.0,
)

# 8x8x1 digits, 10 classes: 292,362 parameters (293,098 with BN); 2,259,018 at 32x32x3. Dropout 0.5
# after the two hidden dense layers, as in AlexNet; no grouped layers.
SmallAlexNet = functools.partial(AlexNet, **_SMALL)
SmallAlexNetBN = functools.partial(AlexNetBN, **_SMALL)
# The same pattern on 1-D signals (registered as "conv1d" / "conv1d_bn"): MNIST-1D, (40, 1) signals,
# 10 classes: 94,890 parameters (95,146 with BN); no LRN, no dropout.
AlexNet1D = functools.partial(AlexNet, **_ALEXNET1D)
AlexNet1DBN = functools.partial(AlexNetBN, **_ALEXNET1D)
