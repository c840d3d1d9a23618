"""Orchestration of iCT runs with Ray: Ray Train (tune.ray_train, CLI tune/train.py), Ray Tune + Optuna searches.

Kept import-free so that `import tune.<module>` does not pull in Ray for the modules that do not need it.
"""
