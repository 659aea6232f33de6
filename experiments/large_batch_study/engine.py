"""Trains a grid of small runs (seeds × peak learning rates) with one compiled step: the study's engine.

A *grid* is every run of one model with one optimizer at one global batch size B: seeds s = 1..S times
peak learning rates γ_0 ∈ {γ_1, ..., γ_L}. All runs share one compiled training step, in which the
learning rate is a traced argument, so the grid compiles once whatever S, L and the number of epochs
(the "train longer" runs reuse it). Run r = (s, l) follows

    γ_t = γ_l · u(t)        u: warm-up then poly(2) decay, peak 1 (lars_optax.warmup_polynomial_decay)
    w  ← tx(γ_t).update(∇L(w; batch_t(s)), w)

where the optimizer ``tx`` comes from `training.optimizers.OPTIMIZERS` (the same factories as train.py,
hence the same masks), evaluated with the scalar γ_t of the step. For LARS this is exactly the scheduled
optimizer, which evaluates its schedule once per update. The seed fixes the initialisation, the data
order (``input_pipeline.arrays.epoch_permutation``, as train.py) and the dropout keys, so all learning
rates of one seed see the same batches (common random numbers make the LR comparison less noisy).

Runs are advanced ``runs_per_call`` at a time by a `jax.vmap`-ped step: every chunk calls the same
compiled program, and a vmapped run equals the same run alone to float32 rounding (tested; not bitwise,
because XLA lowers a convolution whose kernel is batched by `vmap` to a grouped convolution, which sums in
another order). On CPU the default is one run per call, because XLA's CPU backend runs that grouped
convolution slower than the same runs one after another; on GPU/TPU the default is all runs in one call.

The engine keeps its own training step rather than train.py's (`training.steps`), because a grid is not a
training run: the step is `jax.vmap`-ped over runs, takes the learning rate as a traced argument (one
compilation for every γ_0 and epoch budget), gathers its batch on the device from the whole training set
held there (no input pipeline) and reads the per-layer LARS diagnostics after every epoch. What it shares
with train.py is what defines the experiment: the models, the optimizer factories
(`training.optimizers.OPTIMIZERS`), the loss (`training.steps.cross_entropy`) and the data order
(`input_pipeline.arrays.epoch_permutation`). Like train.py's step it is one call from Python per step,
never a `lax.scan` over the epoch: on XLA's CPU backend convolutions inside a loop body run an order of
magnitude slower than the same step called from Python (jax#12868).
"""

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn

import input_pipeline
import lars_optax
from input_pipeline import mnist1d
from input_pipeline.arrays import epoch_permutation
from training import optimizers, steps

_INIT_STREAM, _DROPOUT_STREAM = 0, 1  # fold_in indices of a seed's key.
DIAGNOSTIC_FIELDS = lars_optax.TrustRatioDiagnostics._fields


class Split(NamedTuple):
  """A data set in memory with a validation split carved from its training split.

  Attributes:
    train_images: ``(N, ...)`` float32 training examples (the validation examples removed).
    train_labels: ``(N,)`` int32.
    val_images: held-out training examples, used to choose the learning rate.
    val_labels: their labels.
    test_images: the data set's evaluation split, reported for the chosen learning rate only.
    test_labels: their labels.
    num_classes: the number of labels.
  """

  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int


def mnist1d_split(*, val_examples: int, val_seed: int, data_dir: str | None = None) -> Split:
  """MNIST-1D with all 40,000 training signals; validation signals generated with another seed.

  The training and test splits are `input_pipeline`'s (the package's generator, seed 42); the
  ``val_examples`` validation signals are the first training signals of a second data set made by the
  same generator (`mnist1d.data.make_dataset`, default arguments) with seed ``val_seed``, so no training
  signal is held out.
  """
  x_train, y_train, x_test, y_test = input_pipeline.load_arrays("mnist1d", data_dir=data_dir)
  num_samples = -(-val_examples * 5 // 4 // 10) * 10  # the generator keeps 80% as its training split.
  extra = mnist1d.load(num_samples=num_samples, seed=val_seed, data_dir=data_dir)
  if val_seed == mnist1d.SEED or len(extra.train_labels) < val_examples:
    raise ValueError(f"val_seed must differ from {mnist1d.SEED} and val_examples be positive.")
  val_x, val_y = extra.train_images[:val_examples], extra.train_labels[:val_examples]
  return Split(x_train, y_train, val_x, val_y, x_test, y_test, mnist1d.NUM_CLASSES)


def tfds_arrays(dataset: str, data_dir: str | None) -> tuple[np.ndarray, ...]:
  """``(x_train, y_train, x_test, y_test)`` of a prepared TFDS image-classification data set, in memory.

  The training split and the evaluation split (`input_pipeline.tfds_data`'s choice) in stored order,
  images normalised as train.py's pipeline does (`input_pipeline.preprocessing.normalize`), float32.

  Raises:
    ValueError: if its images vary in size (they must stack into one array), or from `tfds_data.open_source`
      (unknown, not prepared, not image classification).
  """
  import tensorflow as tf  # only for TFDS data sets.

  from input_pipeline import preprocessing, tfds_data

  source = tfds_data.open_source(dataset, data_dir, "none", None)
  if None in source.image_shape:
    raise ValueError(f"{dataset!r} has images of varying size {source.image_shape}: the study needs one.")

  def split(name: str) -> tuple[np.ndarray, np.ndarray]:
    examples = source.builder.as_dataset(split=name, batch_size=-1, shuffle_files=False)
    images = preprocessing.normalize(examples[source.image_key], None, tf.float32)
    return np.asarray(images), np.asarray(examples[source.label_key], np.int32)

  return (*split(tfds_data.TRAIN_SPLIT), *split(source.eval_split))


def load_split(
  dataset: str,
  *,
  val_examples: int,
  train_examples: int | None = None,
  data_dir: str | None = None,
  seed: int = 0,
) -> Split:
  """Loads ``dataset`` ("digits", "mnist1d" or a TFDS data set, `tfds_arrays`) and carves a validation split.

  The training split is shuffled with ``numpy.random.default_rng(seed)``; the first ``val_examples``
  become the validation split and the next ``train_examples`` (default: all the rest) the training set.

  Raises:
    ValueError: if ``val_examples`` is not positive or leaves fewer than ``train_examples`` examples.
  """
  if dataset in input_pipeline.ARRAY_DATASETS:
    x_train, y_train, x_test, y_test = input_pipeline.load_arrays(dataset, data_dir=data_dir)
  else:
    x_train, y_train, x_test, y_test = tfds_arrays(dataset, data_dir)
  available = len(x_train) - val_examples
  if val_examples < 1 or available < 1:
    raise ValueError(f"val_examples must be in [1, {len(x_train) - 1}] for {dataset!r}, got {val_examples}.")
  if train_examples is not None and not 1 <= train_examples <= available:
    raise ValueError(
      f"train_examples must be in [1, {available}] for {dataset!r} with {val_examples} validation "
      f"examples, got {train_examples}."
    )
  order = np.random.default_rng(seed).permutation(len(x_train))
  val, train = order[:val_examples], order[val_examples:][:train_examples]
  num_classes = input_pipeline.get_dataset_info(dataset, data_dir=data_dir).num_classes
  return Split(x_train[train], y_train[train], x_train[val], y_train[val], x_test, y_test, num_classes)


class RunState(NamedTuple):
  """The state of one run (a leading run axis when stacked for `jax.vmap`)."""

  params: Any
  batch_stats: Any  # {} for models without batch norm.
  opt_state: optax.OptState
  loss_sum: jax.Array  # float32: training loss summed over the steps of the current epoch.


@dataclasses.dataclass
class GridRuns:
  """What a grid of runs produced; arrays are indexed ``[seed, learning rate, ...]``.

  Attributes:
    val_accuracy: ``(S, L)`` final accuracy on the validation split.
    test_accuracy: ``(S, L)`` final accuracy on the test split.
    train_loss: ``(S, L, E)`` mean training loss of every epoch (NaN or inf once a run diverged).
    diagnostics: ``lars_optax`` diagnostics of the adapted layers at the last step of every epoch:
      ``{"trust_ratio" | "param_norm" | "grad_norm": {layer: (S, L, E)}}`` with layers named like
      ``"conv1/kernel"``; empty for optimizers without LARS diagnostics.
    seconds: wall-clock time of the grid, compilation included.
  """

  val_accuracy: np.ndarray
  test_accuracy: np.ndarray
  train_loss: np.ndarray
  diagnostics: dict[str, dict[str, np.ndarray]]
  seconds: float

  @property
  def trust_ratios(self) -> dict[str, np.ndarray]:
    """λ per adapted layer, ``(S, L, E)``; empty without LARS diagnostics."""
    return self.diagnostics.get("trust_ratio", {})


@dataclasses.dataclass(frozen=True)
class OptimizerHparams:
  """Hyperparameters shared by every optimizer of the study (the LARS paper's, its Table 3 setup).

  Attributes:
    momentum: m.
    weight_decay: β, applied by the optimizer to kernels only (rank mask), never in the loss.
    trust_coefficient: η of LARS and LARC.
    eps: ε of the trust ratio.
    lars_mask: the leaves the LARS optimizers adapt, a name in `training.optimizers.MASKS`.
  """

  momentum: float = 0.9
  weight_decay: float = 5e-4
  trust_coefficient: float = 0.001
  eps: float = 0.0
  lars_mask: str = "rank"

  def factory(self, optimizer: str) -> Callable[[Any], optax.GradientTransformation]:
    """``learning_rate -> tx`` for ``optimizer``, a name in `training.optimizers.OPTIMIZERS`."""
    if optimizer not in optimizers.OPTIMIZERS:
      raise ValueError(f"optimizer must be one of {sorted(optimizers.OPTIMIZERS)}, got {optimizer!r}.")
    config = ml_collections.ConfigDict(
      {
        "momentum": self.momentum,
        "weight_decay": self.weight_decay,
        "trust_coefficient": self.trust_coefficient,
        "lars_eps": self.eps,
        "lars_mask": self.lars_mask,
        "nesterov": False,
      }
    )
    return lambda learning_rate: optimizers.OPTIMIZERS[optimizer](config, learning_rate)


def _model_call(model: nn.Module, params: Any, batch_stats: Any, images: jax.Array, **kwargs) -> Any:
  variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
  return model.apply(variables, images, **kwargs)


class CompiledModel:
  """A model's initialisation and accuracy, compiled once and shared by all its grids.

  Args:
    model: the Flax module.
    sample_input: one example batch ``(1, ...)``, to initialise the parameters.
    batch_size: evaluation batch (the evaluation set is padded to a multiple of it).
  """

  def __init__(self, model: nn.Module, sample_input: np.ndarray, batch_size: int = 1000):
    self.model = model
    self._batch_size = batch_size

    def init(key):
      variables = model.init(key, sample_input, train=False)
      return variables["params"], variables.get("batch_stats", {})

    def correct(params, batch_stats, images, labels, mask):
      logits = _model_call(model, params, batch_stats, images, train=False)
      return jnp.sum((jnp.argmax(logits, -1) == labels) & mask)

    self.init = jax.jit(jax.vmap(init))
    self._correct = jax.jit(jax.vmap(correct, in_axes=(0, 0, None, None, None)))

  def accuracy(self, states: Sequence[RunState], images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Accuracy of every run of every chunk of ``states`` (concatenated, in run order)."""
    size, count = self._batch_size, len(labels)
    padded = -(-count // size) * size
    images = np.concatenate([images, np.zeros((padded - count, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(padded - count, labels.dtype)])
    mask = np.arange(padded) < count
    totals = []
    for state in states:
      total = sum(
        self._correct(
          state.params,
          state.batch_stats,
          images[i : i + size],
          labels[i : i + size],
          mask[i : i + size],
        )
        for i in range(0, padded, size)
      )
      totals.append(np.asarray(total))
    return np.concatenate(totals) / count


def _gather(states: Sequence[RunState], read: Callable[[RunState], Any], num_runs: int) -> np.ndarray:
  """``read`` of every run (last axis), in run order, without the padding runs of the last chunk."""
  return np.concatenate([np.asarray(read(s)) for s in states], axis=-1)[..., :num_runs]


def _diagnostics_reader(layers: Sequence[str]) -> Callable[[RunState], jax.Array]:
  """Reads the diagnostics of ``layers`` from stacked states: ``(fields, len(layers), runs)``."""

  def read(state: RunState) -> jax.Array:
    flat = lars_optax.flatten_diagnostics(lars_optax.get_diagnostics(state.opt_state))
    return jnp.asarray([[flat[f"{field}/{name}"] for name in layers] for field in DIAGNOSTIC_FIELDS])

  return read


def _adapted_layers(params: Any) -> list[str]:
  """Names (as in `lars_optax.flatten_diagnostics`) of the leaves LARS adapts by default."""
  mask = lars_optax.rank_mask(params)
  flat = lars_optax.flatten_diagnostics(lars_optax.TrustRatioDiagnostics(mask, mask, mask))
  prefix = "trust_ratio/"
  return [name[len(prefix) :] for name, adapted in flat.items() if name.startswith(prefix) and adapted]


class _RunPlan(NamedTuple):
  """Which run is which, and how runs are grouped for the vmapped step."""

  num_runs: int  # R = S · L
  seeds: np.ndarray  # (R,) the seed of every run
  peaks: np.ndarray  # (R,) float32 γ_0 of every run
  chunks: list[np.ndarray]  # run indices advanced by one call (the last one padded by repetition)
  init_keys: jax.Array  # (R,) initialisation keys
  dropout_keys: list[jax.Array]  # per chunk, the dropout keys of its runs


def _by_field(records: Sequence[np.ndarray], layers: Sequence[str], shape: tuple[int, int]) -> dict:
  """Per-epoch ``(fields, layers, R)`` records -> ``{field: {layer: (S, L, E)}}`` ({} without records)."""
  if not records:
    return {}
  stacked = np.stack(records, -1).reshape(len(DIAGNOSTIC_FIELDS), len(layers), *shape, len(records))
  return {field: dict(zip(layers, stacked[i], strict=True)) for i, field in enumerate(DIAGNOSTIC_FIELDS)}


class GridTrainer:
  """Trains grids of one (model, optimizer, batch size); the step compiles on the first call only.

  Args:
    model: the `CompiledModel`.
    make_optimizer: ``learning_rate -> optax.GradientTransformation`` (the rate may be traced).
    split: the data.
    batch_size: B, the global batch of one step (the last partial batch of an epoch is dropped).
    runs_per_call: runs advanced by one call of the vmapped step (None: 1 on CPU, all elsewhere).
  """

  def __init__(
    self,
    model: CompiledModel,
    make_optimizer: Callable[[Any], optax.GradientTransformation],
    split: Split,
    batch_size: int,
    runs_per_call: int | None = None,
  ):
    self._split = split
    self._model = model
    self._runs_per_call = runs_per_call
    self.batch_size = batch_size
    self.steps_per_epoch = lars_optax.steps_per_epoch(len(split.train_labels), batch_size)
    self._images = jnp.asarray(split.train_images)
    self._labels = jnp.asarray(split.train_labels)
    num_classes = split.num_classes

    def init(params, batch_stats):
      opt_state = make_optimizer(0.0).init(params)
      return RunState(params, batch_stats, opt_state, jnp.zeros([], jnp.float32))

    def train_step(state, learning_rate, order, key, step, images, labels):
      offset = (step % self.steps_per_epoch) * batch_size
      batch = jax.lax.dynamic_slice_in_dim(order, offset, batch_size)
      rng = jax.random.fold_in(key, step)

      def loss_fn(params):
        logits, updates = _model_call(
          model.model,
          params,
          state.batch_stats,
          images[batch],
          train=True,
          mutable=["batch_stats"],
          rngs={"dropout": rng},
        )
        loss = steps.cross_entropy(logits, labels[batch], num_classes).mean()
        return loss, updates.get("batch_stats", {})

      (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      tx = make_optimizer(learning_rate)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
      return RunState(params, batch_stats, opt_state, state.loss_sum + loss)

    self._init = jax.jit(jax.vmap(init))
    self._step = jax.jit(jax.vmap(train_step, in_axes=(0, 0, 0, 0, None, None, None)), donate_argnums=0)

  def run(
    self,
    seeds: Sequence[int],
    peak_learning_rates: Sequence[float],
    *,
    num_epochs: int,
    warmup_epochs: float,
    on_epoch: Callable[[int], None] = lambda runs: None,
  ) -> GridRuns:
    """Trains every (seed, peak LR) run for ``num_epochs`` epochs and evaluates it.

    Args:
      seeds: S seeds (initialisation, data order, dropout).
      peak_learning_rates: the L values of γ_0.
      num_epochs: E, the epoch budget (the schedule decays to 0 at its end).
      warmup_epochs: linear warm-up from 0, then poly(2) decay.
      on_epoch: called with the number of runs after each epoch (a progress bar's update).

    Returns:
      The `GridRuns`.
    """
    start = time.perf_counter()
    plan = self._plan(seeds, peak_learning_rates)
    unit = self._unit_schedule(num_epochs, warmup_epochs)
    states = [self._init(*self._model.init(plan.init_keys[c])) for c in plan.chunks]
    layers = _adapted_layers(jax.tree.map(lambda x: x[0], states[0].params))
    has_diagnostics = bool(lars_optax.find_diagnostics(states[0].opt_state))
    losses, records = [], []
    for epoch in range(num_epochs):
      states = self._train_epoch(states, plan, epoch, unit)
      losses.append(_gather(states, lambda s: s.loss_sum / self.steps_per_epoch, plan.num_runs))
      if has_diagnostics:
        records.append(_gather(states, _diagnostics_reader(layers), plan.num_runs))
      states = [s._replace(loss_sum=jnp.zeros_like(s.loss_sum)) for s in states]
      on_epoch(plan.num_runs)
    shape = (len(seeds), len(peak_learning_rates))
    return GridRuns(
      val_accuracy=self._accuracy(states, "val", plan.num_runs).reshape(shape),
      test_accuracy=self._accuracy(states, "test", plan.num_runs).reshape(shape),
      train_loss=np.stack(losses, -1).reshape(*shape, num_epochs),
      diagnostics=_by_field(records, layers, shape),
      seconds=time.perf_counter() - start,
    )

  def _plan(self, seeds: Sequence[int], peak_learning_rates: Sequence[float]) -> _RunPlan:
    """Run r = (seed r // L, learning rate r % L), grouped into chunks of ``runs_per_call``."""
    num_runs = len(seeds) * len(peak_learning_rates)
    size = self._runs_per_call or (1 if jax.default_backend() == "cpu" else num_runs)
    padded = np.minimum(np.arange(-(-num_runs // size) * size), num_runs - 1)  # repeat the last run.
    run_seeds = np.repeat(np.asarray(seeds), len(peak_learning_rates))
    keys = jax.vmap(jax.random.key)(run_seeds)
    fold_in = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    chunks = list(padded.reshape(-1, size))
    return _RunPlan(
      num_runs=num_runs,
      seeds=run_seeds,
      peaks=np.tile(np.asarray(peak_learning_rates, np.float32), len(seeds)),
      chunks=chunks,
      init_keys=fold_in(keys, _INIT_STREAM),
      dropout_keys=[fold_in(keys, _DROPOUT_STREAM)[c] for c in chunks],
    )

  def _unit_schedule(self, num_epochs: int, warmup_epochs: float) -> np.ndarray:
    """γ_t / γ_0 of every step: linear warm-up from 0, then poly(2) decay to 0 (update t uses t)."""
    unit = lars_optax.warmup_polynomial_decay_from_epochs(
      1.0,
      num_epochs=num_epochs,
      warmup_epochs=warmup_epochs,
      steps_per_epoch=self.steps_per_epoch,
      warmup_from_first_step=True,
    )
    return np.asarray(unit(jnp.arange(num_epochs * self.steps_per_epoch)), np.float32)

  def _train_epoch(
    self, states: list[RunState], plan: _RunPlan, epoch: int, unit: np.ndarray
  ) -> list[RunState]:
    """One epoch of every run; each seed visits the training set in `epoch_permutation` order."""
    num_train = len(self._split.train_labels)
    orders = {s: epoch_permutation(int(s), epoch, num_train).astype(np.int32) for s in set(plan.seeds)}
    chunk_orders = [jnp.asarray(np.stack([orders[s] for s in plan.seeds[c]])) for c in plan.chunks]
    for k in range(self.steps_per_epoch):
      step = epoch * self.steps_per_epoch + k
      rates = plan.peaks * unit[step]
      for i, c in enumerate(plan.chunks):
        states[i] = self._step(
          states[i],
          rates[c],
          chunk_orders[i],
          plan.dropout_keys[i],
          np.int32(step),
          self._images,
          self._labels,
        )
    return states

  def _accuracy(self, states: Sequence[RunState], which: str, num_runs: int) -> np.ndarray:
    images = getattr(self._split, f"{which}_images")
    labels = getattr(self._split, f"{which}_labels")
    return self._model.accuracy(states, images, labels)[:num_runs]
