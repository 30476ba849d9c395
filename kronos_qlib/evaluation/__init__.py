"""Evaluation: recorded runs read back (:mod:`.runs`), daily metrics (:mod:`.metrics`), statistics that carry
their claims (:mod:`.statistics`), a score backtested as the workflows trade it (:mod:`.backtest`) and plots
(:mod:`.plots`). The rules that choose settings on valid belong to the studies (research/selection.py)."""
from .metrics import (LABEL_DAYS, daily_ic, drawdown, group_returns, labels_inside_segment, partial_ic,
                      rank_correlation, residualize, signal_metrics, topk_excess)
from .plots import plot_cumulative_excess, plot_training_curves
from .runs import (RecordedRun, annualized, comparison_table, format_table, init_recorder_store, load_run,
                   quantile_returns, signal_correlation, summarize, training_curves, universe_return)
from .statistics import NW_LAG, mean_over_seeds, mean_t, newey_west_se, paired_difference

__all__ = ["LABEL_DAYS", "daily_ic", "drawdown", "group_returns", "labels_inside_segment", "partial_ic",
           "rank_correlation", "residualize", "signal_metrics", "topk_excess", "plot_cumulative_excess",
           "plot_training_curves", "RecordedRun", "annualized", "comparison_table", "format_table",
           "init_recorder_store", "load_run", "quantile_returns", "signal_correlation", "summarize", "training_curves",
           "universe_return", "NW_LAG", "mean_over_seeds", "mean_t", "newey_west_se", "paired_difference"]
