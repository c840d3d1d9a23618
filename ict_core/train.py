"""`python -m ict_core.train`: the training command line under the name the README and every printed hint use.

This module only runs it; the command line is ict_core/cli/train.py (the console script ict-train runs the same
function) and the training loop is ict_core/trainer.py.
"""
if __name__ == "__main__":
    import sys

    from ict_core.cli.train import cli

    sys.exit(cli())
