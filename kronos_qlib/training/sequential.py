"""SequentialTrainer: tokenizer stage, then predictor stage with that tokenizer frozen, driven by one config."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..data import WindowDataset, build_datasets
from ..errors import CheckpointError, ConfigError, KronosInputError
from ..model import Kronos, KronosTokenizer
from .checkpoint import seed_everything
from .config import FinetuneConfig, load_config
from .distributed import Runtime, setup, teardown
from .loop import StageTrainer
from .stages import predictor_stage, tokenizer_stage

logger = logging.getLogger(__name__)

STAGES = ("tokenizer", "predictor")


def checkpoint_exists(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _load_or_build(cls, source: str | bool, config: dict | None, what: str):
    """``source`` (Hub id or folder) when given, else a fresh model from ``config``."""
    if source:
        return cls.from_pretrained(str(source))
    if not config:
        raise ConfigError(f"pre_trained_{what} is false, so {what}_config must give the model's arguments")
    return cls(**config)


class SequentialTrainer:
    """Runs the enabled stages in order and returns the folders of their best checkpoints."""

    def __init__(self, config: FinetuneConfig, runtime: Runtime | None = None, resume: bool = False,
                 datasets: dict[str, WindowDataset] | None = None):
        """``datasets`` (train and valid windows) replace those built from ``config.data``."""
        self.config = config
        self.rt = runtime or setup(config.device)
        self.resume = resume
        self._datasets = datasets

    @property
    def datasets(self):
        if self._datasets is None:
            self._datasets = build_datasets(self.config.data)
        return self._datasets

    def run(self, stages: tuple[str, ...] | None = None) -> dict[str, Path]:
        cfg = self.config
        if stages is None:
            stages = tuple(s for s, on in zip(STAGES, (cfg.train_tokenizer, cfg.train_basemodel)) if on)
        results = {}
        if "tokenizer" in stages:
            results["tokenizer"] = self._stage("tokenizer", self._train_tokenizer)
        if "predictor" in stages:
            results["predictor"] = self._stage("predictor", self._train_predictor)
        return results

    def _stage(self, name: str, train) -> Path:
        best = Path(self.config.output_dir).expanduser() / name / "best"
        if self.config.skip_existing and checkpoint_exists(best) and not self.resume:
            if self.rt.is_main:
                logger.info("%s stage skipped: %s already holds a checkpoint (skip_existing)", name, best)
            return best
        return train()

    def tokenizer_for_predictor(self) -> KronosTokenizer:
        """The finetuned tokenizer of this run when it exists, else ``pre_trained_tokenizer``."""
        trained = self.config.tokenizer_dir / "best"
        if checkpoint_exists(trained):
            return KronosTokenizer.from_pretrained(trained)
        if not self.config.pre_trained_tokenizer:
            raise ConfigError(f"the predictor stage needs a tokenizer: train one first (train_tokenizer) or set "
                              f"pre_trained_tokenizer; {trained} holds none")
        return KronosTokenizer.from_pretrained(str(self.config.pre_trained_tokenizer))

    def _train_tokenizer(self) -> Path:
        cfg = self.config
        seed_everything(cfg.seed)
        tokenizer = _load_or_build(KronosTokenizer, cfg.pre_trained_tokenizer, cfg.tokenizer_config, "tokenizer")
        return self._fit(tokenizer_stage(tokenizer), cfg.tokenizer_training, cfg.tokenizer_dir)

    def _train_predictor(self) -> Path:
        cfg = self.config
        seed_everything(cfg.seed)
        tokenizer = self.tokenizer_for_predictor().to(self.rt.device)
        predictor = _load_or_build(Kronos, cfg.pre_trained_predictor, cfg.predictor_config, "predictor")
        if (predictor.s1_bits, predictor.s2_bits) != (tokenizer.s1_bits, tokenizer.s2_bits):
            raise ConfigError(f"the predictor's vocabulary (s1_bits={predictor.s1_bits}, s2_bits={predictor.s2_bits})"
                              f" does not match the tokenizer's (s1_bits={tokenizer.s1_bits}, "
                              f"s2_bits={tokenizer.s2_bits})")
        return self._fit(predictor_stage(predictor, tokenizer, cfg.teacher_forcing), cfg.predictor_training,
                         cfg.predictor_dir)

    def _fit(self, stage, stage_config, out_dir: Path) -> Path:
        data = self.datasets
        trainer = StageTrainer(stage, data["train"], data["valid"], stage_config, out_dir, self.rt, self.config.seed)
        if self.rt.is_main:
            logger.info("%s stage: %d train / %d valid windows, %d steps per epoch, output %s", stage.name,
                        len(data["train"]), len(data["valid"]), trainer.steps_per_epoch, out_dir)
        return trainer.fit(resume=self.resume)


def main(stages: tuple[str, ...] | None = None, argv: list[str] | None = None) -> None:
    """Command line of scripts/train_*.py: ``--config FILE [--resume]``, one process or under torchrun."""
    what = "both stages" if stages is None else " + ".join(stages) + " stage"
    parser = argparse.ArgumentParser(description=f"Finetune Kronos on Qlib data ({what})")
    parser.add_argument("--config", required=True, help="YAML file (see workflows/finetune_csi300.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue each stage from its last.pt")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        SequentialTrainer(config, setup(config.device), resume=args.resume).run(stages)
    except (ConfigError, KronosInputError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        teardown(exit_code=2)
    teardown()
