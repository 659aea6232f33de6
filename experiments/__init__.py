"""Experiments that reproduce the LARS paper's observations at small scale, one sub-package each.

Each sub-folder holds its code, its committed results (``results/``) and a README with the command, the
hardware and the time measured: `experiments.large_batch_study` (accuracy against batch size at a fixed
epoch budget) and `experiments.trust_ratios` (‖w‖/‖g‖ per layer).
"""
