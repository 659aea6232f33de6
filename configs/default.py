"""Default: a small AlexNet-BN trained with LARS on the offline 8x8 digits (scikit-learn).

Command:   python train.py            (the same as --config=configs/default.py)
Hardware:  CPU, no accelerator, no download (110 steps of batch 128, 10 epochs).
Expected:  test top-1 98.9% on the 359 test digits at seed 0 (`expected_top1`, printed at start);
           98.3-99.7% over seeds 0-4 (`--config.seed=N`, jax 0.10.2 on CPU).

Other configs start from this one. Names follow Flax's ImageNet example and `lars_optax.lars`; the comment
ending a field's line is its `python train.py --help` entry (training/cli.py reads it from here).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from input_pipeline import defaults


def get_config() -> ml_collections.ConfigDict:
  """The default training config."""
  config = ml_collections.ConfigDict()
  # Data (input_pipeline).
  config.dataset = "digits"  # "digits", "mnist1d", "fake" or a TFDS name prepared in data_dir.
  config.data_dir = placeholder(str)  # TFDS data directory (never downloaded at run time).
  config.image_size = placeholder(int)  # Side of the served images; None: the data set's default.
  config.augmentation = placeholder(str)  # TFDS augmentation ("inception", ...); None: the default.
  config.crop_padding = defaults.CROP_PADDING  # Eval centre crop keeps image_size/(image_size + this).
  config.cache = placeholder(bool)  # TFDS: keep records in memory; None: if within defaults.CACHE_BYTES.
  config.shuffle_buffer_size = defaults.SHUFFLE_BUFFER_SIZE  # TFDS shuffle buffer, examples per process.
  config.prefetch_batches = 2  # Batches copied to the devices ahead of the step.

  # Model (models.MODELS) and numerics.
  config.model = "small_alexnet_bn"  # A name in models.MODELS.
  # Module fields of `model` (None: the module's default), checked at start; other fields through a config
  # file or --config.model_kwargs="{'lrn_size': 3}" (which replaces the whole dict).
  config.model_kwargs = ml_collections.ConfigDict(
    {
      "dropout_rate": placeholder(float),  # AlexNets: dropout after each hidden dense layer, in [0, 1).
      "bn_momentum": placeholder(float),  # Models with batch norm: running-average momentum, in [0, 1).
      "bn_epsilon": placeholder(float),  # Models with batch norm: variance epsilon.
      "num_filters": placeholder(int),  # ResNets: channels of the first stage.
    }
  )  # Module fields (None: its default); also "{'field': value, ...}".
  config.half_precision = False  # bfloat16 activations; parameters and optimizer state stay float32.
  config.sync_batch_norm = True  # Batch statistics over all devices (False: per device).

  # Optimizer (training.optimizers.OPTIMIZERS).
  config.optimizer = "lars"  # "lars", "larc", "sgd" (momentum SGD) or "optax_lars".
  config.learning_rate = 10.0  # γ_0 at `base_batch_size`, scaled by `lr_scaling` to `batch_size`.
  config.lr_scaling = "none"  # "none" (LARS: γ_0 as given), "linear" or "sqrt".
  config.base_batch_size = 256  # B_0 of the scaling rule.
  config.warmup_epochs = 2.0  # Linear warm-up from 0 to γ_0.
  config.num_epochs = 10.0  # Length of the schedule; warm-up then poly decay to `end_learning_rate`.
  config.end_learning_rate = 0.0  # The learning rate at the end of the decay.
  config.lr_decay_power = 2.0  # p of the poly(p) decay (2 in the paper).
  config.momentum = 0.9  # m.
  config.nesterov = False  # Nesterov momentum.
  config.weight_decay = 5e-4  # β, applied by the optimizer only (never in the loss).
  config.trust_coefficient = 0.001  # η.
  config.lars_eps = 0.0  # ε in the trust ratio's denominator.
  config.lars_mask = "rank"  # Leaves LARS adapts: "rank" (kernels; biases, BN: plain SGD) or "every_leaf".
  config.weight_decay_mask = placeholder(str)  # Leaves decayed: "rank" or "every_leaf"; None: lars_mask's.
  config.label_smoothing = 0.0  # Of the cross-entropy targets, in [0, 1).
  config.skip_nonfinite_steps = False  # Skip (and count) non-finite steps; False: such a step stops the run.
  config.max_consecutive_skips = 10  # With skipping, more non-finite steps than this in a row stop the run.

  # Batch: the global batch of one optimizer step (the paper's B), all devices and micro-batches together.
  config.batch_size = 128  # B; configs with a per-batch table pick their row from their argument.
  config.grad_accum_steps = 1  # k micro-batches of batch_size / k per step (BN statistics per micro-batch).
  config.eval_batch_size = placeholder(int)  # None: batch_size / grad_accum_steps.

  # Parallelism.
  config.parallelism = "jit"  # "jit" (NamedSharding) or "pmap" (jax.pmap over a "batch" axis).

  _add_loop_fields(config)
  return config


def _add_loop_fields(config: ml_collections.ConfigDict) -> None:
  """The fields of the training loop: seed, length, logging, evaluation and checkpoint cadence."""
  # Loop.
  config.seed = 0  # Initialisation, data order and dropout all derive from (seed, step).
  config.num_train_steps = -1  # -1: the schedule's length; fewer steps compress the whole schedule.
  config.log_every_steps = 10  # Steps between training-metric records (and plain progress lines).
  config.eval_every_steps = -5  # -n: every n epochs; 0: only at the end.
  config.steps_per_eval = -1  # -1: the whole evaluation split (exact, padded batches masked); 0: none.
  config.diagnostics_every_steps = 50  # Per-layer trust ratios to metrics.jsonl and TensorBoard; 0: never.
  config.checkpoint_every_steps = 1000  # Periodic checkpoints; 0: final (and preemption) only.
  config.keep_checkpoints = 3  # Keep the last K checkpoints.
  config.preemption_sync_every_steps = 10  # Multi-process: steps between agreeing on a SIGTERM stop.
  config.progress_bar = True  # tqdm bar on a terminal; plain lines when stdout is not one.
  config.expected_top1 = 98.9  # Top-1 (%) the config's source reports for this setup; None: no figure.
