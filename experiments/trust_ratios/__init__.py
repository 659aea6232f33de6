"""‖w‖/‖g‖ per layer at initialisation and after a few LARS steps: `layer_norms`, run as a module."""
