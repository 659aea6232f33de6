"""``python -m benchmarks.device_check``: see `benchmarks.device_check.cli`."""

from benchmarks.device_check import cli

cli.main()
