"""What one data set's study depends on, and the rule that sizes the study to a data set.

Any data set that `input_pipeline.load_arrays` serves works: the built-ins ("digits", "mnist1d") and any
prepared TFDS image-classification data set of fixed-size images (``data_dir``). The sweep follows from the
number N of training examples (`sweep_for`); a model name chooses a no-BN / BN pair of ``models.MODELS``
(``name`` and ``name_bn``).
"""

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import input_pipeline
import models
from experiments.large_batch_study import engine
from experiments.large_batch_study.schema import MIN_RATIO, MIN_STEPS
from models import ConvLayer

SWEEP = (1, 2, 4, MIN_RATIO)  # the batch sizes of a sweep, in units of its smallest, B_min
SMALLEST_BATCH = (2, 16)  # B_min's range: batch norm needs two examples; larger N gets more steps instead
MIN_STEPS_PER_EPOCH = 10  # at the largest batch, so that an epoch is not one or two steps
SGD_GRID_PER_16 = (0.005, 0.01, 0.02, 0.04)  # momentum SGD's first grid at B_min = 16 (linear in B_min)
LARS_GRID = (1.0, 2.0, 4.0, 8.0)  # LARS's first grid of γ_0 at B_min
EPOCH_FACTORS = (0.5, 1, 2, 4)  # the Table 5 analogue's budgets, in units of the sweep's budget E


@dataclasses.dataclass(frozen=True)
class StudySettings:
  """Everything one data set's study depends on.

  Attributes:
    dataset: a name `input_pipeline.load_arrays` knows: "digits", "mnist1d" or a prepared TFDS data set.
    models: names in ``models.MODELS``: the no-BN model first, then its BN twin.
    model_kwargs: fields passed to every model (reduced widths), the same for both of the pair.
    batch_sizes: the global batch sizes of the sweep (the smallest is B_min of the linear scaling rule).
    num_epochs: the epoch budget E of the sweep.
    warmup_fraction: linear warm-up over this fraction of the budget, then poly(2) decay to 0.
    val_examples: validation examples (carved from the training split; MNIST-1D: generated).
    val_seed: MNIST-1D only: the generator's seed for the validation signals.
    sgd_grid: the initial grid of γ_base for momentum SGD at B_min.
    lars_grid: the initial grid of γ_0 for LARS at B_min.
    epoch_budgets: the Table 5 analogue's budgets at the largest batch (no-BN model).
    full_batch_epochs: the budget (one step per epoch) of the no-BN model trained with the whole training set
      as its batch; None: not run.
    num_seeds: seeds 0 .. num_seeds - 1 at every chosen learning rate (seed 0 tunes).
    max_widenings: at most this many values added to a grid whose choice sits at an edge.
    train_examples: None for the whole training split minus validation (MNIST-1D: always all of it).
    data_dir: the TFDS data directory (MNIST-1D: its cache).
  """

  dataset: str
  models: tuple[str, ...]
  batch_sizes: tuple[int, ...]
  num_epochs: int
  val_examples: int
  sgd_grid: tuple[float, ...]
  lars_grid: tuple[float, ...]
  epoch_budgets: tuple[int, ...]
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  warmup_fraction: float = 0.1
  val_seed: int = 1
  num_seeds: int = 3
  max_widenings: int = 4
  train_examples: int | None = None
  full_batch_epochs: int | None = None
  data_dir: str | None = None

  def __post_init__(self):
    if self.num_seeds < 1 or self.num_epochs < 1 or len(self.batch_sizes) < 2:
      raise ValueError(
        "num_seeds and num_epochs must be >= 1 and batch_sizes hold two or more, got "
        f"{self.num_seeds}, {self.num_epochs}, {self.batch_sizes}."
      )


# Half the channels of the registry's widths (a quarter of the multiply-adds), so that the study fits its
# budget on 2 CPU cores; models without an entry keep the registry's widths.
MODEL_KWARGS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
  {
    "small_alexnet": dict(
      layers=(
        ConvLayer(16, (3, 3), lrn=True, pool=True),
        ConvLayer(32, (3, 3), lrn=True),
        ConvLayer(64, (3, 3), pool=True),
      ),
      hidden_features=(128, 128),
    ),
    "conv1d": dict(
      layers=(ConvLayer(16, (5,)), ConvLayer(16, (5,), pool=True), ConvLayer(32, (3,), pool=True)),
      hidden_features=(64,),
    ),
  }
)
# What the built-in data sets state beyond the rule: their model, validation split and full-batch run.
BUILTINS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
  {
    # 1,438 training images - 158 validation = 1,280 = 10 x 128: 200 steps at B = 128 in 20 epochs.
    "digits": dict(model="small_alexnet", val_examples=158, full_batch_epochs=200),
    # All 40,000 training signals (validation generated): 156 steps per epoch at B = 256, 312 in 2 epochs.
    "mnist1d": dict(model="conv1d", val_examples=4000),
  }
)
# --quick: 256 training examples, two batches, 2 seeds, small grids: a smoke test (tests, notebook 02).
QUICK_SETTINGS = MappingProxyType(
  dict(
    batch_sizes=(16, 64),
    train_examples=256,
    num_epochs=8,
    num_seeds=2,
    max_widenings=1,
    sgd_grid=(0.005, 0.01, 0.02),
    lars_grid=(1.0, 2.0, 4.0),
    epoch_budgets=(4, 8),
    full_batch_epochs=8,
  )
)


def model_pairs() -> list[str]:
  """The no-BN models of ``models.MODELS`` that have a batch-norm twin ``<name>_bn``."""
  return sorted(name for name in models.MODELS if f"{name}_bn" in models.MODELS)


def sweep_for(num_train: int, dataset: str = "the data set") -> dict[str, Any]:
  """The batch sweep, epoch budget and grids for ``num_train`` training examples.

  The paper's protocol at small scale: batch sizes B_min · (1, 2, 4, 16), the largest taking at least 200
  steps in one epoch budget E shared by the whole sweep. B_min is the largest power of two in [2, 16] for
  which the largest batch still leaves 10 steps per epoch; E is the fewest epochs that give 200 steps at the
  largest batch. Momentum SGD's first grid scales with B_min (the linear scaling rule), LARS's does not;
  the Table 5 analogue's budgets are E/2, E, 2E and 4E. Digits (N = 1,280) gets B = 8 ... 128 and E = 20,
  MNIST-1D (N = 40,000) B = 16 ... 256 and E = 2.

  Raises:
    ValueError: if N is below 2 · 16 · 10 = 320, too few for that sweep.
  """
  low, high = SMALLEST_BATCH
  fit = num_train // (MIN_STEPS_PER_EPOCH * MIN_RATIO)  # the largest B_min that leaves 10 steps per epoch
  if fit < low:
    raise ValueError(
      f"{dataset} has {num_train} training examples (after the validation split); the study needs at least "
      f"{low * MIN_RATIO * MIN_STEPS_PER_EPOCH}: its largest batch is {MIN_RATIO}x the smallest (at least "
      f"{low}) and must leave {MIN_STEPS_PER_EPOCH} steps per epoch to take >= {MIN_STEPS} steps in the "
      "budget."
    )
  b_min = min(high, 1 << (fit.bit_length() - 1))
  num_epochs = -(-MIN_STEPS // (num_train // (MIN_RATIO * b_min)))
  return dict(
    batch_sizes=tuple(b_min * k for k in SWEEP),
    num_epochs=num_epochs,
    sgd_grid=tuple(lr * b_min / 16 for lr in SGD_GRID_PER_16),
    lars_grid=LARS_GRID,
    epoch_budgets=tuple(sorted({max(1, round(f * num_epochs)) for f in EPOCH_FACTORS})),
  )


def _default_model(dataset: str, data_dir: str | None) -> str:
  """The built-in's model, else small_alexnet for images and conv1d for signals (rank of one example)."""
  if dataset in BUILTINS:
    return BUILTINS[dataset]["model"]
  shape = input_pipeline.get_dataset_info(dataset, data_dir=data_dir).image_shape
  return "conv1d" if len(shape) == 2 else "small_alexnet"


def settings_for(
  dataset: str,
  *,
  model: str | None = None,
  data_dir: str | None = None,
  quick: bool = False,
  **overrides: Any,
) -> StudySettings:
  """The settings of ``dataset`` by `sweep_for` (`QUICK_SETTINGS` on top when ``quick``).

  Args:
    dataset: "digits", "mnist1d" or a prepared TFDS image-classification data set of fixed-size images.
    model: a name of `model_pairs` (None: the data set's default).
    data_dir: the TFDS data directory (None: TFDS's default).
    quick: the smoke test's settings.
    **overrides: fields of `StudySettings`; None values are ignored.

  Raises:
    ValueError: for an unknown model or data set, or one too small for the sweep (see `sweep_for`).
  """
  if model is not None and model not in model_pairs():
    raise ValueError(f"model must be one of {model_pairs()}, got {model!r}.")
  model = model or _default_model(dataset, data_dir)
  known = BUILTINS.get(dataset, {})
  num_examples = input_pipeline.get_dataset_info(dataset, data_dir=data_dir).num_train
  val_examples = known.get("val_examples", max(1, num_examples // 10))
  num_train = num_examples if dataset == "mnist1d" else num_examples - val_examples
  settings = StudySettings(
    dataset,
    models=(model, f"{model}_bn"),
    model_kwargs=MODEL_KWARGS.get(model, {}),
    val_examples=val_examples,
    full_batch_epochs=known.get("full_batch_epochs"),
    data_dir=data_dir,
    **sweep_for(num_train, repr(dataset)),
  )
  if quick:
    settings = dataclasses.replace(settings, **QUICK_SETTINGS)
  return dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def load_data(settings: StudySettings) -> engine.Split:
  """The training, validation and test splits of ``settings.dataset``."""
  if settings.dataset == "mnist1d":
    return engine.mnist1d_split(
      val_examples=settings.val_examples, val_seed=settings.val_seed, data_dir=settings.data_dir
    )
  return engine.load_split(
    settings.dataset,
    val_examples=settings.val_examples,
    train_examples=settings.train_examples,
    data_dir=settings.data_dir,
  )
