"""Training configs for train.py: ml_collections files whose docstrings give command, hardware and top-1."""
