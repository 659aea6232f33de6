"""The LARS paper's large-batch experiment at small scale, on any data set that fits in memory.

Modules: `settings` (what a data set's study depends on, and the rule that sizes it), `engine` (trains a
grid of runs with one compiled step), `study` (the protocol: contenders, tuning, sweeps), `report` (tables
and plots), `schema` (the summary's schema and the protocol's rules), `cli` (``python -m
experiments.large_batch_study``). README.md gives the commands, the hardware and the time measured.
"""
