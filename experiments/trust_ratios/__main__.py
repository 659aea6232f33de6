"""``python -m experiments.trust_ratios``: see `experiments.trust_ratios.layer_norms`."""

import sys

from experiments.trust_ratios import layer_norms

layer_norms.main(sys.argv[1:])
