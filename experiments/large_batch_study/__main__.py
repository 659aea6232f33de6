"""``python -m experiments.large_batch_study``: see `experiments.large_batch_study.cli`."""

import sys

from experiments.large_batch_study import cli

cli.main(sys.argv[1:])
