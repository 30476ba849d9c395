"""SequentialTrainer: tokenizer stage, then predictor stage with that tokenizer frozen, driven by one config."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from torch import nn

from ..data import WindowDataset, build_datasets
from ..errors import CheckpointError, ConfigError, KronosInputError, TrainingError
from ..model import Kronos, KronosTokenizer
from ..model.hub import init_arg_mismatch, random_origin, weights_digest
from .checkpoint import seed_everything
from .config import FinetuneConfig, StageConfig, load_config, network_revision
from .distributed import Runtime, setup, teardown
from .loop import StageTrainer, agreed
from .stage_folder import Plan, StageFolder
from .stages import Stage, predictor_stage, tokenizer_stage

logger = logging.getLogger(__name__)

STAGES = ("tokenizer", "predictor")


def load_or_build(cls: type, source: str | bool, config: dict | None, what: str, revision: str | None,
                  seed: int) -> nn.Module:
    """``source`` (Hub id at ``revision``, or folder) with ``config`` overriding its arguments, else a new model
    from ``config`` whose ``origin`` names the seed of its random weights."""
    missing, unknown = init_arg_mismatch(cls, config or {})
    if unknown:
        raise ConfigError(f"{what}_config has unknown key(s) {unknown} for {cls.__name__}")
    if source:
        return cls.from_pretrained(str(source), revision=revision, **(config or {}))
    if missing:
        raise ConfigError(f"pre_trained_{what} is false, so {what}_config must give every argument of "
                          f"{cls.__name__}; missing {missing}")
    model = cls(**config)
    model.origin = random_origin(seed)
    return model


def _pinned(revision: str | None) -> dict:
    """A pinned Hub revision among a stage's settings (a stage trained from the latest is reused as before)."""
    return {"revision": revision} if revision else {}


class SequentialTrainer:
    """Runs the enabled stages in order and returns the folders of their best checkpoints.

    Each stage's folder decides what happens (:class:`StageFolder`): with ``skip_existing`` a finished stage with
    the same settings is reused and one with other settings (dates, data, model, tokenizer) is an error rather
    than a silently stale model; an unfinished one is continued with ``resume`` and refused without it.
    """

    def __init__(self, config: FinetuneConfig, runtime: Runtime | None = None, resume: bool = False,
                 datasets: dict[str, WindowDataset] | None = None):
        """``datasets`` (train and valid windows) replace those built from ``config.data`` and ``config.forecast``."""
        self.config = config
        self.rt = runtime or setup(config.device)
        self.resume = resume
        self._datasets = datasets

    @property
    def datasets(self) -> dict[str, WindowDataset]:
        """Train and valid windows; rank 0 builds (and caches) them before the other ranks read them."""
        if self._datasets is None:
            data = dataclasses.replace(self.config.data, splits=("train", "valid"))
            if self.rt.is_main:
                self._datasets = build_datasets(data, self.config.forecast)
            self.rt.barrier()
            if not self.rt.is_main:
                self._datasets = build_datasets(data, self.config.forecast)
        return self._datasets

    def run(self, stages: tuple[str, ...] | None = None) -> dict[str, Path]:
        cfg = self.config
        if stages is None:
            stages = tuple(s for s, on in zip(STAGES, (cfg.train_tokenizer, cfg.train_basemodel)) if on)
        results = {}
        if "tokenizer" in stages:
            results["tokenizer"] = self._train_tokenizer()
        if "predictor" in stages:
            results["predictor"] = self._train_predictor()
        return results

    def folder(self, stage: str) -> StageFolder:
        """The folder of ``stage`` ("tokenizer" or "predictor") in output_dir."""
        return StageFolder(Path(self.config.output_dir).expanduser() / stage, stage)

    def tokenizer_for_predictor(self) -> KronosTokenizer:
        """The finetuned tokenizer of this run when its stage finished, else ``pre_trained_tokenizer``."""
        trained = self.folder("tokenizer")
        if trained.finished_settings() is not None:
            return KronosTokenizer.from_pretrained(trained.best)
        if not self.config.pre_trained_tokenizer:
            raise ConfigError(f"the predictor stage needs a tokenizer: train one first (train_tokenizer) or set "
                              f"pre_trained_tokenizer; {trained.path} holds no finished tokenizer stage")
        return KronosTokenizer.from_pretrained(str(self.config.pre_trained_tokenizer),
                                               revision=network_revision(self.config.revision, "tokenizer"))

    def _train_tokenizer(self) -> Path:
        cfg = self.config
        revision = network_revision(cfg.revision, "tokenizer")
        model = {"source": cfg.pre_trained_tokenizer, "config": cfg.tokenizer_config, **_pinned(revision)}

        def build() -> Stage:
            return tokenizer_stage(load_or_build(KronosTokenizer, cfg.pre_trained_tokenizer, cfg.tokenizer_config,
                                                 "tokenizer", revision, cfg.seed))

        return self._stage("tokenizer", build, cfg.tokenizer_training, model)

    def _train_predictor(self) -> Path:
        cfg = self.config
        tokenizer = self.tokenizer_for_predictor().to(self.rt.device)
        revision = network_revision(cfg.revision, "predictor")
        model = {"source": cfg.pre_trained_predictor, "config": cfg.predictor_config,
                 "teacher_forcing": cfg.teacher_forcing, "tokenizer": weights_digest(tokenizer), **_pinned(revision)}

        def build() -> Stage:
            predictor = load_or_build(Kronos, cfg.pre_trained_predictor, cfg.predictor_config, "predictor",
                                      revision, cfg.seed)
            if (predictor.s1_bits, predictor.s2_bits) != (tokenizer.s1_bits, tokenizer.s2_bits):
                raise ConfigError(f"the predictor's vocabulary (s1_bits={predictor.s1_bits}, "
                                  f"s2_bits={predictor.s2_bits}) does not match the tokenizer's "
                                  f"(s1_bits={tokenizer.s1_bits}, s2_bits={tokenizer.s2_bits})")
            return predictor_stage(predictor, tokenizer, cfg.teacher_forcing)

        return self._stage("predictor", build, cfg.predictor_training, model)

    def _stage(self, name: str, build: Callable[[], Stage], stage_config: StageConfig, model: dict) -> Path:
        data = self.datasets
        settings = json.loads(json.dumps({
            "stage": name, "model": model, "training": dataclasses.asdict(stage_config), "seed": self.config.seed,
            "data": {split: data[split].fingerprint() for split in ("train", "valid")},
        }, default=str))
        folder = self.folder(name)
        settings = agreed(self.rt, settings, f"the {name} stage's settings")
        finished = agreed(self.rt, folder.finished_settings(), f"the content of {folder.done}")
        in_progress = agreed(self.rt, folder.in_progress(), f"the files in {folder.path}")
        plan = folder.plan(settings, finished, in_progress, skip_existing=self.config.skip_existing,
                           resume=self.resume)
        if plan is Plan.SKIP:
            if self.rt.is_main:
                logger.info("%s stage reused: %s finished with the same settings (skip_existing)", name, folder.best)
            return folder.best
        if plan is Plan.FRESH and self.rt.is_main:
            folder.start_fresh()
        self.rt.barrier()
        seed_everything(self.config.seed)
        trainer = StageTrainer(build(), data["train"], data["valid"], stage_config, folder, self.rt,
                               self.config.seed, settings)
        if self.rt.is_main:
            logger.info("%s stage: %d train / %d valid windows, %d steps per epoch, %s in %s", name,
                        len(data["train"]), len(data["valid"]), trainer.steps_per_epoch,
                        "resuming" if plan is Plan.RESUME else "training", folder.path)
        best = trainer.fit(resume=plan is Plan.RESUME)
        if not agreed(self.rt, (best / "model.safetensors").is_file(), f"whether {best} exists"):
            raise TrainingError(f"{name} stage ended without a checkpoint in {best}")
        return best


def main(stages: tuple[str, ...] | None = None, argv: list[str] | None = None) -> None:
    """Command line of scripts/train_*.py: ``--config FILE [--resume]``, one process or under torchrun."""
    what = "both stages" if stages is None else " + ".join(stages) + " stage"
    parser = argparse.ArgumentParser(description=f"Finetune Kronos on Qlib data ({what})")
    parser.add_argument("--config", required=True, help="YAML file (see workflows/finetune_csi300.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an unfinished stage from its last.pt (without it, one is refused)")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    try:
        config = load_config(args.config)
        SequentialTrainer(config, setup(config.device), resume=args.resume).run(stages)
    except (ConfigError, KronosInputError, CheckpointError, TrainingError) as err:
        print(f"error: {err}", file=sys.stderr)
        teardown(exit_code=2)
    teardown()
