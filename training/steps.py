"""The training and evaluation steps, compiled with `jax.pmap` or with `jax.jit` and `NamedSharding`.

One step is data-parallel SGD with a LARS-style optimizer:

    g = (1/k) Σ_i ∇ L(w; micro-batch i)      averaged over the k accumulated micro-batches and all devices
    w, opt_state ← tx.update(g, opt_state, w)  weight decay inside ``tx`` (never in the loss L)

The training state is a replicated global array under both compilers (``NamedSharding(mesh, P())``), so
checkpoints and logs do not depend on which one ran. Under `jax.pmap` it enters and leaves with
``in_axes=None, out_axes=None``; everything returned that way is `lax.pmean`-ed first, because an
output that differed per device would silently be device 0's.

Batch-norm semantics (``sync_batch_norm``):

- pmap, synced: the model's ``BatchNorm(axis_name="batch")`` averages the statistics over devices, so
  each micro-batch is normalised with the statistics of the global micro-batch.
- pmap, unsynced: every device normalises with its own statistics; the running averages are then
  `lax.pmean`-ed over devices.
- jit, synced: a batch-sharded array is one global array, so plain ``BatchNorm`` (no axis name) already
  computes global statistics; XLA inserts the all-reduce.
- jit, unsynced: the same per-device statistics as pmap are obtained explicitly, by reshaping the
  micro-batch to (devices, per-device batch) and `jax.vmap`-ping the model over the groups; the running
  averages are then averaged over the groups.
- Gradient accumulation (k > 1): statistics are per micro-batch ("ghost" batches, as in the paper's
  Caffe runs with ``iter_size``), and the running averages are updated k times per optimizer step.

Micro-batch i of a step is rows ``[i·m, (i+1)·m)`` of every device's part of the global batch, under
both compilers, so that pmap and jit see the same micro-batches.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from training.errors import TrainingError

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
  """The static parts of a step.

  Attributes:
    model: the Flax module (``axis_name`` is set per compiler, see `Pmap`).
    tx: the optimizer; ``tx.update`` gets the parameters (LARS needs them).
    learning_rate_fn: the optimizer's schedule, evaluated at its update count for logging.
    num_classes: the number of labels.
    label_smoothing: α of the smoothed one-hot targets of the training loss.
    grad_accum_steps: k, the number of micro-batches accumulated per step.
    skip_nonfinite: leave the state unchanged (and count the step) when the loss, a gradient or the new
      parameters, optimizer state or batch statistics are not finite; otherwise such a step is applied
      and reported (``metrics["finite"]``), and `NonFiniteGuard` stops the run.
    seed: dropout keys are ``fold_in(fold_in(key(seed), 1), step)``, then per device and micro-batch.
  """

  model: nn.Module
  tx: optax.GradientTransformation
  learning_rate_fn: optax.Schedule
  num_classes: int
  label_smoothing: float = 0.0
  grad_accum_steps: int = 1
  skip_nonfinite: bool = False
  seed: int = 0


def create_train_state(
  model: nn.Module, tx: optax.GradientTransformation, *, seed: int, input_shape: Sequence[int]
) -> TrainState:
  """Initialises parameters (from ``jax.random.key(seed)``), batch statistics and optimizer state."""

  @jax.jit
  def init() -> TrainState:
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    variables = model.init(jax.random.key(seed), dummy, train=False)
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


def _split_microbatches(x: jax.Array, num_micro: int, num_shards: int) -> jax.Array:
  """(S·k·m, ...) → (k, S·m, ...): micro-batch i takes rows [i·m, (i+1)·m) of each of the S shards."""
  shards = x.reshape(num_shards, num_micro, -1, *x.shape[1:])
  return jnp.swapaxes(shards, 0, 1).reshape(num_micro, -1, *x.shape[1:])


def _apply_train(
  model: nn.Module,
  params: Any,
  batch_stats: Any,
  images: jax.Array,
  rng: jax.Array,
  bn_groups: int,
) -> tuple[jax.Array, Any]:
  """Training-mode forward pass; batch norm over ``bn_groups`` equal groups of the batch."""

  def apply(images: jax.Array, rng: jax.Array) -> tuple[jax.Array, Any]:
    variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    logits, updates = model.apply(
      variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
    )
    return logits, updates.get("batch_stats", {})

  if bn_groups == 1:
    return apply(images, rng)
  groups = images.reshape(bn_groups, -1, *images.shape[1:])
  logits, stats = jax.vmap(apply)(groups, jax.random.split(rng, bn_groups))
  return logits.reshape(-1, logits.shape[-1]), jax.tree.map(lambda s: s.mean(axis=0), stats)


def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def train_step(
  state: TrainState,
  batch: Batch,
  config: StepConfig,
  *,
  axis_name: str | None,
  num_shards: int,
  bn_groups: int,
) -> tuple[TrainState, Metrics]:
  """One optimizer step on ``batch`` (``image``, ``label``) of k·(micro-batch) examples.

  Args:
    state: the replicated training state.
    batch: this device's part of the batch (pmap) or the global batch (jit).
    config: the static step configuration.
    axis_name: the pmap axis to average over, None under jit.
    num_shards: how many device parts the batch is made of (1 under pmap, the device count under jit),
      which fixes the micro-batch layout.
    bn_groups: the number of groups with separate batch statistics in one micro-batch.

  Returns:
    The new state and the step's metrics (averaged over micro-batches and devices).
  """
  k = config.grad_accum_steps
  rng = jax.random.fold_in(jax.random.key(config.seed), _DROPOUT_STREAM)
  rng = jax.random.fold_in(rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
  images = _split_microbatches(batch["image"], k, num_shards)
  labels = _split_microbatches(batch["label"], k, num_shards)

  def loss_fn(params, batch_stats, images, labels, rng):
    logits, batch_stats = _apply_train(config.model, params, batch_stats, images, rng, bn_groups)
    loss = cross_entropy(logits, labels, config.num_classes, config.label_smoothing).mean()
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return loss, (batch_stats, accuracy)

  def micro_step(carry, inputs):
    grads, batch_stats, loss, accuracy = carry
    images, labels, index = inputs
    (loss_i, (batch_stats, accuracy_i)), grads_i = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch_stats, images, labels, jax.random.fold_in(rng, index)
    )
    grads = jax.tree.map(jnp.add, grads, grads_i)
    return (grads, batch_stats, loss + loss_i, accuracy + accuracy_i), None

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  carry = (zeros, state.batch_stats, jnp.zeros(()), jnp.zeros(()))
  (grads, batch_stats, loss, accuracy), _ = lax.scan(micro_step, carry, (images, labels, jnp.arange(k)))
  grads, loss, accuracy = jax.tree.map(lambda x: x / k, (grads, loss, accuracy))
  if axis_name is not None:
    grads, batch_stats, loss, accuracy = lax.pmean((grads, batch_stats, loss, accuracy), axis_name)

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


class NonFiniteGuard:
  """Stops a run on non-finite steps, reading the steps' ``finite`` flags only when asked.

  `add` keeps each step's flag on the device (nothing waits for the step); `check`, called before
  anything is logged or saved, fetches them. Without skipping, the first non-finite step stops the
  run; with skipping, more than ``max_consecutive`` skipped steps in a row do. Every process holds the
  same (replicated) flags, so every process stops at the same check.
  """

  def __init__(self, *, skip: bool, max_consecutive: int):
    self._skip, self._max_consecutive = skip, max_consecutive
    self._pending: list[tuple[int, jax.Array, jax.Array]] = []
    self._consecutive = 0

  def add(self, step: int, metrics: Metrics) -> None:
    """Records the flag of the step that completed ``step`` optimizer steps."""
    self._pending.append((step, metrics["finite"], metrics["loss"]))

  def check(self) -> None:
    """Raises `TrainingError` if the steps since the last check went wrong (see the class docstring)."""
    pending, self._pending = jax.device_get(self._pending), []
    for step, finite, loss in pending:
      if finite:
        self._consecutive = 0
        continue
      if not self._skip:
        raise TrainingError(
          f"Training diverged at step {step}: the loss ({float(loss)}) or the new parameters or "
          "optimizer state are not finite. Stopped without saving it (the checkpoints on disk are "
          "finite). Lower the learning rate, or skip such steps with --config.skip_nonfinite_steps=true."
        )
      self._consecutive += 1
      if self._consecutive > self._max_consecutive:
        raise TrainingError(
          f"{self._consecutive} consecutive non-finite steps were skipped (steps "
          f"{step - self._consecutive + 1} to {step}), more than config.max_consecutive_skips="
          f"{self._max_consecutive}: the run has diverged. Stopped without saving (the checkpoints on "
          "disk are finite)."
        )


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
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  return sums


def _with_axis_name(model: nn.Module, axis_name: str | None) -> nn.Module:
  """The model with batch norm over ``axis_name`` (unchanged for models without batch norm)."""
  return model.clone(axis_name=axis_name) if hasattr(model, "axis_name") else model


class _Parallelism:
  """Places state and batches on a 1-D device mesh and holds the compiled steps."""

  axis: str

  def __init__(self, devices: Sequence[jax.Device] | None = None):
    self.mesh = Mesh(np.asarray(jax.devices() if devices is None else devices), (self.axis,))
    self.num_devices = self.mesh.size
    self.train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
    self.eval_step: Callable[[TrainState, Batch], Metrics]

  def place_state(self, state: TrainState) -> TrainState:
    """Replicates a (host) state on every device of the mesh."""
    return jax.device_put(state, NamedSharding(self.mesh, P()))

  def _global_array(self, local: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(NamedSharding(self.mesh, P(self.axis)), local)


class Pmap(_Parallelism):
  """`jax.pmap` over the ``"batch"`` axis; batches are (devices, per-device batch, ...)."""

  axis = "batch"

  def __init__(
    self, config: StepConfig, *, sync_batch_norm: bool, devices: Sequence[jax.Device] | None = None
  ):
    super().__init__(devices)
    model = _with_axis_name(config.model, self.axis if sync_batch_norm else None)
    config = dataclasses.replace(config, model=model)
    pmap = functools.partial(jax.pmap, axis_name=self.axis, devices=self.mesh.devices.tolist())
    self.train_step = pmap(
      functools.partial(train_step, config=config, axis_name=self.axis, num_shards=1, bn_groups=1),
      in_axes=(None, 0),
      out_axes=None,
      donate_argnums=(0,),
    )
    self.eval_step = pmap(
      functools.partial(eval_step, config=config, axis_name=self.axis), in_axes=(None, 0), out_axes=None
    )

  def place_batch(self, batch: Batch) -> Batch:
    """Process-local (local devices, b, ...) arrays → global (devices, b, ...) arrays."""
    return {key: self._global_array(value) for key, value in batch.items()}


class Jit(_Parallelism):
  """`jax.jit` with the batch sharded over a 1-D ``"data"`` mesh and the state replicated."""

  axis = "data"

  def __init__(
    self, config: StepConfig, *, sync_batch_norm: bool, devices: Sequence[jax.Device] | None = None
  ):
    super().__init__(devices)
    config = dataclasses.replace(config, model=_with_axis_name(config.model, None))
    replicated = NamedSharding(self.mesh, P())
    bn_groups = 1 if sync_batch_norm else self.num_devices
    self.train_step = jax.jit(
      functools.partial(
        train_step, config=config, axis_name=None, num_shards=self.num_devices, bn_groups=bn_groups
      ),
      out_shardings=replicated,
      donate_argnums=(0,),
    )
    self.eval_step = jax.jit(
      functools.partial(eval_step, config=config, axis_name=None), out_shardings=replicated
    )

  def place_batch(self, batch: Batch) -> Batch:
    """Process-local (local devices, b, ...) arrays → global (devices · b, ...) arrays."""
    return {
      key: self._global_array(np.reshape(value, (-1, *np.shape(value)[2:]))) for key, value in batch.items()
    }


PARALLELISM: Mapping[str, type[_Parallelism]] = MappingProxyType({"pmap": Pmap, "jit": Jit})
