"""Finetune the tokenizer, then the predictor (stages switched by train_tokenizer / train_basemodel).

    python scripts/train_sequential.py --config workflows/finetune_csi300.yaml [--resume]
    torchrun --standalone --nproc_per_node=N scripts/train_sequential.py --config ...
"""
from kronos_qlib.training import main

if __name__ == "__main__":
    main(stages=None)
