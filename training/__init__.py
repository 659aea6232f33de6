"""The pieces of train.py, one job per module: each module's docstring says which."""
