"""The two Kronos networks, byte-compatible with the released NeoQuasar checkpoints."""
from .layers import KVCache
from .predictor import TIME_FEATURES, Kronos, PredictorCache
from .return_head import ReturnHead, context_states
from .tokenizer import KronosTokenizer

__all__ = ["Kronos", "KronosTokenizer", "KVCache", "PredictorCache", "ReturnHead", "TIME_FEATURES", "context_states"]
