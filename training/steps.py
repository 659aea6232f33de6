"""The training and evaluation steps, compiled with `jax.jit` (batch sharded over a mesh) or `jax.pmap`.

One step: g = (1/k) Σ_i ∇L(w; micro-batch i) over the k micro-batches and all devices, then
w, opt_state ← tx.update(g, opt_state, w) (weight decay inside ``tx``, never in the loss L). With k = 1
there is no loop; with k > 1 the micro-batches run in `lax.scan`, fully unrolled on CPU (XLA runs
convolutions inside a loop body an order of magnitude slower there, jax#12868). Micro-batch i is rows
``[i·m, (i+1)·m)`` of every device's part of the batch under both compilers; batch-norm statistics are
per micro-batch (the paper's Caffe ``iter_size``), the running averages updated k times per step.

The state is replicated (``NamedSharding(mesh, P())``) under both compilers; under `jax.pmap` it enters
and leaves with ``in_axes=None, out_axes=None``, so everything returned is `lax.pmean`-ed first (an
output that differed per device would silently be device 0's). ``sync_batch_norm``: pmap averages the
statistics over its axis (``BatchNorm(axis_name="batch")``); under jit a batch-sharded array is one global
array, so plain ``BatchNorm`` is already global. Unsynced, each device normalises with its own statistics
(under jit: the model `jax.vmap`-ped over per-device groups) and the running averages are averaged.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

Batch = Mapping[str, Any]
Metrics = dict[str, jax.Array]

_DROPOUT_STREAM = 1  # fold_in index of the dropout RNG stream (the initialisation uses the seed's key).


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; a pytree of arrays (checkpointed as is)."""

  step: jax.Array  # int32 scalar: optimizer steps taken, skipped ones included.
  params: Any  # float32 parameters.
  batch_stats: Any  # batch-norm running averages; {} for models without batch norm.
  opt_state: optax.OptState
  skipped_steps: jax.Array  # int32 scalar: steps skipped because they were not finite (skip_nonfinite).


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The static parts of a step."""

  model: nn.Module  # The Flax module (its batch-norm ``axis_name`` is set per compiler).
  tx: optax.GradientTransformation  # The optimizer; ``tx.update`` gets the parameters (LARS needs them).
  learning_rate_fn: optax.Schedule  # The optimizer's schedule, evaluated at its update count for logging.
  num_classes: int
  label_smoothing: float = 0.0  # α of the smoothed one-hot targets of the training loss.
  grad_accum_steps: int = 1  # k, the micro-batches accumulated per step.
  # Leave the state unchanged (and count the step) when the loss, a gradient or the new parameters,
  # optimizer state or batch statistics are not finite; else apply such a step, flagged (metrics["finite"]).
  skip_nonfinite: bool = False
  seed: int = 0  # Dropout keys: fold_in(fold_in(key(seed), 1), step), then per device and micro-batch.


class StepLayout(NamedTuple):
  """How a compiled step sees its batch."""

  axis_name: str | None  # The pmap axis to average over; None under jit.
  num_shards: int  # Device parts of the batch (1 under pmap), which fix the micro-batch layout.
  bn_groups: int  # Groups of a micro-batch with separate batch statistics.
  unroll: bool  # Unroll the loop over k > 1 micro-batches (CPU) instead of a rolled `lax.scan`.


def create_train_state(
  model: nn.Module, tx: optax.GradientTransformation, *, seed: int, input_shape: Sequence[int]
) -> TrainState:
  """Initialises parameters (from ``jax.random.key(seed)``), batch statistics and optimizer state."""

  @jax.jit
  def init() -> TrainState:
    variables = model.init(jax.random.key(seed), jnp.zeros((1, *input_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      skipped_steps=jnp.zeros((), jnp.int32),
    )

  return init()


def cross_entropy(
  logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example softmax cross-entropy against one-hot targets smoothed by ``label_smoothing``, in float32."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _loss_fn(params, batch_stats, images, labels, rng, *, config: StepConfig, bn_groups: int):
  """Training-mode loss; batch norm over ``bn_groups`` equal groups of the batch."""

  def apply(images: jax.Array, rng: jax.Array) -> tuple[jax.Array, Any]:
    variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    logits, updates = config.model.apply(
      variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
    )
    return logits, updates.get("batch_stats", {})

  if bn_groups == 1:
    logits, batch_stats = apply(images, rng)
  else:
    groups = images.reshape(bn_groups, -1, *images.shape[1:])
    logits, stats = jax.vmap(apply)(groups, jax.random.split(rng, bn_groups))
    logits, batch_stats = logits.reshape(-1, logits.shape[-1]), jax.tree.map(lambda s: s.mean(0), stats)
  loss = cross_entropy(logits, labels, config.num_classes, config.label_smoothing).mean()
  return loss, (batch_stats, jnp.mean(jnp.argmax(logits, axis=-1) == labels))


def _accumulate(
  state: TrainState, batch: Batch, rng: jax.Array, config: StepConfig, layout: StepLayout
) -> tuple[Any, Any, jax.Array, jax.Array]:
  """Gradient, loss and accuracy averaged over the k micro-batches; the new batch statistics."""
  k = config.grad_accum_steps
  loss_fn = functools.partial(_loss_fn, config=config, bn_groups=layout.bn_groups)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def micro_step(carry, inputs):
    sums, batch_stats = carry
    images, labels, index = inputs
    (loss, (batch_stats, accuracy)), grads = grad_fn(
      state.params, batch_stats, images, labels, jax.random.fold_in(rng, index)
    )
    return (jax.tree.map(jnp.add, sums, (grads, loss, accuracy)), batch_stats), None

  carry = ((jax.tree.map(jnp.zeros_like, state.params), jnp.zeros(()), jnp.zeros(())), state.batch_stats)
  if k == 1:
    (sums, batch_stats), _ = micro_step(carry, (batch["image"], batch["label"], 0))
  else:

    def split(x):  # (S·k·m, ...) → (k, S·m, ...): micro-batch i is rows [i·m, (i+1)·m) of each shard.
      shards = x.reshape(layout.num_shards, k, -1, *x.shape[1:])
      return jnp.swapaxes(shards, 0, 1).reshape(k, -1, *x.shape[1:])

    micro = [split(batch["image"]), split(batch["label"])]
    (sums, batch_stats), _ = lax.scan(micro_step, carry, (*micro, jnp.arange(k)), unroll=layout.unroll)
  grads, loss, accuracy = jax.tree.map(lambda x: x / k, sums)
  return grads, batch_stats, loss, accuracy


def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def train_step(
  state: TrainState, batch: Batch, config: StepConfig, layout: StepLayout
) -> tuple[TrainState, Metrics]:
  """One optimizer step on ``batch`` (``image``, ``label``): the new state and the averaged metrics.

  ``batch`` is this device's part (pmap) or the global batch (jit).
  """
  rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), _DROPOUT_STREAM), state.step)
  if layout.axis_name is not None:
    rng = jax.random.fold_in(rng, lax.axis_index(layout.axis_name))
  averaged = _accumulate(state, batch, rng, config, layout)
  if layout.axis_name is not None:
    averaged = lax.pmean(averaged, layout.axis_name)
  grads, batch_stats, loss, accuracy = averaged
  updates, opt_state = config.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    batch_stats=batch_stats,
    opt_state=opt_state,
  )
  # Finite gradients can still give non-finite parameters (a float32 norm that overflows, an LR of 1e30).
  finite = _all_finite((loss, grads, new_state.params, new_state.opt_state, new_state.batch_stats))
  if config.skip_nonfinite:
    skipped = state.replace(step=state.step + 1, skipped_steps=state.skipped_steps + 1)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, skipped)
  metrics = {
    "loss": loss,
    "accuracy": accuracy,
    "lr": config.learning_rate_fn(state.step - state.skipped_steps),
    "grad_norm": optax.tree.norm(grads),
    "finite": finite,
  }
  return new_state, metrics


def eval_step(state: TrainState, batch: Batch, config: StepConfig, *, axis_name: str | None) -> Metrics:
  """Sums of loss, top-1 and top-5 hits and example count over the unmasked examples of ``batch``."""
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  logits = config.model.apply(variables, batch["image"], train=False)
  labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
  top5 = lax.top_k(logits, min(5, config.num_classes))[1]
  sums = {
    "loss": jnp.sum(cross_entropy(logits, labels, config.num_classes) * mask),
    "accuracy": jnp.sum((top5[:, 0] == labels) * mask),
    "top5_accuracy": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
    "count": jnp.sum(mask),
  }
  return sums if axis_name is None else lax.psum(sums, axis_name)


class _CompiledSteps:
  """A 1-D device mesh, the placement of state and batches on it, and the compiled steps."""

  axis: str

  def __init__(
    self, config: StepConfig, *, sync_batch_norm: bool, devices: Sequence[jax.Device] | None = None
  ):
    self.mesh = Mesh(np.asarray(jax.devices() if devices is None else devices), (self.axis,))
    self.num_devices = self.mesh.size
    self._batch_sharding = NamedSharding(self.mesh, P(self.axis))
    self._replicated = NamedSharding(self.mesh, P())
    self.unroll = self.mesh.devices.flat[0].platform == "cpu"
    self.train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
    self.eval_step: Callable[[TrainState, Batch], Metrics]
    self._compile(config, sync_batch_norm)  # Sets the steps (in the subclasses).

  def place_state(self, state: TrainState) -> TrainState:
    """Replicates a (host) state on every device of the mesh."""
    return jax.device_put(state, self._replicated)

  def place_batch(self, batch: Batch) -> Batch:
    """Process-local (local devices, b, ...) arrays → global (devices, b, ...) arrays."""
    return {k: jax.make_array_from_process_local_data(self._batch_sharding, v) for k, v in batch.items()}


def _with_axis_name(model: nn.Module, axis_name: str | None) -> nn.Module:
  """The model with batch norm over ``axis_name`` (unchanged for models without batch norm)."""
  return model.clone(axis_name=axis_name) if hasattr(model, "axis_name") else model


class PmapSteps(_CompiledSteps):
  """Steps compiled with `jax.pmap` over the ``"batch"`` axis; batches are (devices, per-device batch, …)."""

  axis = "batch"

  def _compile(self, config: StepConfig, sync_batch_norm: bool) -> None:
    axis_name = self.axis if sync_batch_norm else None
    config = dataclasses.replace(config, model=_with_axis_name(config.model, axis_name))
    layout = StepLayout(self.axis, num_shards=1, bn_groups=1, unroll=self.unroll)
    pmap = functools.partial(
      jax.pmap, axis_name=self.axis, devices=self.mesh.devices.tolist(), in_axes=(None, 0), out_axes=None
    )
    self.train_step = pmap(functools.partial(train_step, config=config, layout=layout), donate_argnums=(0,))
    self.eval_step = pmap(functools.partial(eval_step, config=config, axis_name=self.axis))


class JitSteps(_CompiledSteps):
  """Steps compiled with `jax.jit`, the batch sharded over a 1-D ``"data"`` mesh, the state replicated."""

  axis = "data"

  def _compile(self, config: StepConfig, sync_batch_norm: bool) -> None:
    config = dataclasses.replace(config, model=_with_axis_name(config.model, None))
    bn_groups = 1 if sync_batch_norm else self.num_devices
    layout = StepLayout(None, num_shards=self.num_devices, bn_groups=bn_groups, unroll=self.unroll)
    jit = functools.partial(jax.jit, out_shardings=self._replicated)
    self.train_step = jit(functools.partial(train_step, config=config, layout=layout), donate_argnums=(0,))
    self.eval_step = jit(functools.partial(eval_step, config=config, axis_name=None))

  def place_batch(self, batch: Batch) -> Batch:
    """Process-local (local devices, b, ...) arrays → global (devices · b, ...) arrays."""
    return super().place_batch({k: np.reshape(v, (-1, *np.shape(v)[2:])) for k, v in batch.items()})


PARALLELISM: Mapping[str, type[_CompiledSteps]] = MappingProxyType({"pmap": PmapSteps, "jit": JitSteps})
