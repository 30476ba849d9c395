"""Kept for the imports of earlier releases: the sampling grid's rule lives in
:mod:`kronos_qlib.evaluation.selection`."""
from .evaluation.selection import METRICS, SELECTED_BY, SETTINGS, best_setting, grid_row, scoring_days  # noqa: F401
