"""Finetune the predictor with the tokenizer frozen.

    python scripts/train_predictor.py --config workflows/finetune_csi300.yaml [--resume]
    torchrun --standalone --nproc_per_node=N scripts/train_predictor.py --config ...
"""
from kronos_qlib.training import main

if __name__ == "__main__":
    main(stages=("predictor",))
