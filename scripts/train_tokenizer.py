"""Finetune the tokenizer on reconstruction.

    python scripts/train_tokenizer.py --config workflows/finetune_csi300.yaml [--resume]
    torchrun --standalone --nproc_per_node=N scripts/train_tokenizer.py --config ...
"""
from kronos_qlib.training import main

if __name__ == "__main__":
    main(stages=("tokenizer",))
