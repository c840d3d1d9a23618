"""Analysis of experiment folders: Parquet tables in, answers with intervals over seeds out.

Loading (load.py), aggregation (selection.py, stats.py, curve_minimum.py and one module per question) and
plotting (plots.py) are separate, so each step can be used from a notebook on a DataFrame. report.py ties them
together.
Nothing here imports Ray or reads Ray's own trial folders.
"""
from analysis.load import SchemaError, find_experiments, load_evals, load_results, load_trials

__all__ = ["SchemaError", "find_experiments", "load_evals", "load_results", "load_trials"]
