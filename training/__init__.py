"""The pieces of train.py, one job per module.

- `cli`: train.py's command line: `--help` with every config field, user errors as one message.
- `errors`: exit statuses and the error classes behind them.
- `config_checks`: validation of a config before anything compiles.
- `plan`: batch layout, step counts and learning rate derived at start.
- `optimizers`: the optimizer registry ("lars", "larc", "sgd", "optax_lars") and the schedule.
- `steps`: the training and evaluation steps under `jax.pmap` or `jax.jit` with `NamedSharding`.
- `checkpoints`: Orbax checkpoints (periodic, final, last K, checksummed; resume from the newest good one).
- `run_config`: the resolved config in workdir/config.json; a resume may not change the trajectory.
- `metrics_log`: metrics.jsonl and TensorBoard, from process 0.
- `report`: the start block, the progress lines or bar, and the final summary.
- `preemption`: SIGTERM or Ctrl-C → checkpoint at a step all processes agree on.
- `distributed`: `jax.distributed.initialize` with a deadline that names the processes missing.
- `errors`: the exit statuses and error classes of train.py.
- `loop`: `train_and_evaluate`, the loop that ties them together.
"""
