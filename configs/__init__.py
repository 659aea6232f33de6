"""Training configs for train.py: ml_collections files whose docstrings give command, time and top-1."""
