"""Two-stage finetuning (tokenizer, then predictor with the tokenizer frozen), in one process or under torchrun."""
from .config import PRESETS, FinetuneConfig, StageConfig, config_from_dict, load_config
from .sequential import SequentialTrainer, main

__all__ = ["FinetuneConfig", "PRESETS", "SequentialTrainer", "StageConfig", "config_from_dict", "load_config",
           "main"]
