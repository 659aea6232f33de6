"""One check on an accelerator: the LARS update, ResNet-50 training throughput, gradient accumulation.

Run ``python -m benchmarks.device_check`` from the repository root (`benchmarks.device_check.cli` gives the
parts and the options); it imports jax, flax, optax, numpy and this repository only.
"""
