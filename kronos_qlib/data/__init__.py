"""Qlib data for Kronos: daily bars, point-in-time membership, leak-free windows and their cache."""
from .cross_section import HeadSamples, day_batches, head_samples
from .pipeline import SPLITS, DataConfig, build_datasets, check_split_length, data_fingerprint, split_datasets
from .qlib_source import check_provider, init_qlib, load_bars, membership
from .windows import BarPanel, WindowDataset, window_starts

__all__ = ["BarPanel", "DataConfig", "HeadSamples", "SPLITS", "WindowDataset", "build_datasets", "check_provider",
           "check_split_length", "data_fingerprint", "day_batches", "head_samples", "init_qlib", "load_bars",
           "membership", "split_datasets", "window_starts"]
