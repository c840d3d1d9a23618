"""Orchestration of iCT runs with Ray: Ray Train (tune.ray_train, CLI tune/train.py), Ray Tune + Optuna searches.

Imports nothing but pathlib, so that `import tune.<module>` does not pull in Ray for the modules that do not need it.
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # the one definition; tune's modules import it from here
