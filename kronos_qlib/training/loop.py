"""The training loop both stages share: DDP, AdamW + OneCycleLR, validation, checkpoints, resume, metrics.

Only rank 0 writes files. Each epoch ends with the best model (by validation) saved with ``save_pretrained``
and the full training state written atomically to ``last.pt``; ``resume=True`` continues from it and ends
with the same weights as an uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import ConfigError, TrainingError
from ..files import atomic_write_text
from ..logs import progress_bar
from ..model.hub import weights_digest
from .checkpoint import load_state, rng_state, save_atomic, seed_everything, set_rng_state
from .config import StageConfig
from .distributed import Runtime
from .stage_folder import StageFolder, differing_keys
from .stages import Stage

logger = logging.getLogger(__name__)


def agreed(runtime: Runtime, value, what: str):
    """``value`` when every rank sees the same; else an error (e.g. nodes that do not share output_dir)."""
    values = runtime.all_gather(value)
    if any(v != values[0] for v in values):
        raise TrainingError(f"ranks disagree on {what} ({values}): with several nodes, output_dir must be on a "
                            f"filesystem they share")
    return value


class EpochSampler(DistributedSampler):
    """DistributedSampler seeded per epoch that can draw a fresh random subset of windows every epoch."""

    def __init__(self, dataset: Dataset, runtime: Runtime, seed: int, max_samples: int | None = None):
        super().__init__(dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=True, seed=seed,
                         drop_last=True)
        if max_samples is not None and max_samples < len(dataset):
            self.num_samples = max_samples // self.num_replicas
            self.total_size = self.num_samples * self.num_replicas

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator)[:self.total_size]
        return iter(order[self.rank:self.total_size:self.num_replicas].tolist())


def validation_indices(n: int, max_samples: int | None, seed: int, runtime: Runtime) -> list[int]:
    """A fixed subset (same every epoch, so losses compare), split across ranks without padding."""
    indices = np.arange(n)
    if max_samples is not None and max_samples < n:
        indices = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
    return indices[runtime.rank::runtime.world_size].tolist()


class StageTrainer:
    def __init__(self, stage: Stage, train_set: Dataset, valid_set: Dataset, config: StageConfig,
                 folder: StageFolder, runtime: Runtime, seed: int, settings: dict):
        """``settings`` describes everything the result depends on; a resumed run must match it."""
        self.stage, self.config, self.folder, self.rt, self.seed = stage, config, folder, runtime, seed
        self.settings = settings
        self.model = stage.model.to(runtime.device)
        self.amp = (torch.autocast("cuda", dtype=torch.bfloat16) if runtime.device.type == "cuda"
                    and torch.cuda.is_bf16_supported() else nullcontext())
        self.sampler = EpochSampler(train_set, runtime, seed, config.max_train_windows)
        pin = runtime.device.type == "cuda"
        self.train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=self.sampler,
                                       num_workers=config.num_workers, drop_last=True, pin_memory=pin)
        self.valid_loader = DataLoader(valid_set, batch_size=config.batch_size,
                                       sampler=validation_indices(len(valid_set), config.max_valid_windows, seed,
                                                                  runtime),
                                       num_workers=config.num_workers, pin_memory=pin)
        self.steps_per_epoch = len(self.train_loader) // config.accumulation_steps
        if self.steps_per_epoch < 1:
            raise ConfigError(f"{stage.name} stage: {len(self.sampler)} training windows per rank make no full "
                              f"step of batch_size {config.batch_size} x accumulation {config.accumulation_steps}")
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=tuple(config.betas),
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=config.lr, total_steps=config.epochs * self.steps_per_epoch + 1,
            pct_start=config.warmup_pct, div_factor=10.0)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[runtime.local_rank] if pin else None)
                    if runtime.distributed else self.model)
        self.best = math.inf
        self.start_epoch = 0
        self.history: list[dict] = []  # per-epoch metrics, kept in last.pt so a resumed log is complete

    def _write_metrics(self) -> None:
        """Rewrite the JSON-lines log from the history, atomically: at the start (empty for a fresh run, complete
        after a resume) and after every epoch."""
        if self.rt.is_main:
            atomic_write_text(self.folder.metrics, "".join(json.dumps(m) + "\n" for m in self.history))

    # ---------------------------------------------------------------------------------------------- state
    def resume(self) -> bool:
        """Continue from ``last.pt`` if there is one; True when something was restored."""
        last = self.folder.last
        if not agreed(self.rt, last.exists(), f"whether {last} exists"):
            if self.rt.is_main:
                logger.warning("%s: %s has no last.pt (killed during its first epoch): starting at epoch 1",
                               self.stage.name, self.folder.path)
            return False
        state = load_state(last)
        if state["settings"] != self.settings:
            raise ConfigError(f"{last} was written with other settings (they differ in "
                              f"{differing_keys(state['settings'], self.settings)}): resume with the same "
                              f"configuration, or train into another output_dir")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch, self.best, self.history = state["epoch"] + 1, state["best"], state["history"]
        if len(state["rng"]) == self.rt.world_size:
            set_rng_state(state["rng"][self.rt.rank])
        else:
            logger.warning("resuming on %d ranks from a run on %d: random streams restart from the seed",
                           self.rt.world_size, len(state["rng"]))
            seed_everything(self.seed + 1000 * self.start_epoch + self.rt.rank)
        if self.rt.is_main:
            logger.info("%s: resumed from %s at epoch %d (best %s %.5f)", self.stage.name, last,
                        self.start_epoch + 1, self.stage.select_on, self.best)
        return True

    def _checkpoint(self, epoch: int) -> None:
        states = self.rt.all_gather(rng_state())
        if self.rt.is_main:
            save_atomic({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict(), "epoch": epoch, "best": self.best,
                         "history": self.history, "settings": self.settings, "rng": states}, self.folder.last)

    # --------------------------------------------------------------------------------------------- epochs
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.sampler.set_epoch(epoch)
        sums: dict[str, float] = {}
        seen, accum = 0, self.config.accumulation_steps
        began = time.perf_counter()
        batches = progress_bar(self.train_loader, desc=f"{self.stage.name} epoch {epoch + 1}/{self.config.epochs}",
                               disable=not self.rt.is_main, leave=False)
        usable = self.steps_per_epoch * accum
        for i, (x, stamp) in enumerate(batches):
            if i >= usable:
                break
            x, stamp = x.to(self.rt.device, non_blocking=True), stamp.to(self.rt.device, non_blocking=True)
            last_micro = (i + 1) % accum == 0
            sync = nullcontext() if last_micro or self.ddp is self.model else self.ddp.no_sync()
            with sync:
                with self.amp:
                    losses = self.stage.compute(self.ddp, x, stamp)
                (losses["loss"] / accum).backward()
            if last_micro:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * len(x)
            seen += len(x)
            batches.set_postfix(loss=f"{sums['loss'] / seen:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                                refresh=False)
        elapsed = time.perf_counter() - began
        keys = self.stage.metrics
        totals = self.rt.all_reduce_sum([sums[k] for k in keys] + [seen])
        metrics = {f"train_{k}": totals[j] / totals[-1] for j, k in enumerate(keys)}
        metrics["samples_per_s"] = totals[-1] / elapsed
        return metrics

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        """Mean of every loss over all validation windows of every rank (sums and counts all-reduced)."""
        self.model.eval()
        sums: dict[str, float] = {}
        seen = 0
        for x, stamp in self.valid_loader:
            x, stamp = x.to(self.rt.device), stamp.to(self.rt.device)
            with self.amp:
                losses = self.stage.compute(self.model, x, stamp)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value) * len(x)
            seen += len(x)
        keys = self.stage.metrics  # fixed, so every rank reduces the same vector even with no windows of its own
        totals = self.rt.all_reduce_sum([sums.get(k, 0.0) for k in keys] + [seen])
        if totals[-1] == 0:
            raise TrainingError(f"{self.stage.name} stage: the validation split has no windows")
        return {f"valid_{k}": totals[j] / totals[-1] for j, k in enumerate(keys)}

    def fit(self, resume: bool = False) -> Path:
        """Train the remaining epochs (from ``last.pt`` with ``resume``); returns the best checkpoint's folder.

        The folder must be in progress or freshly started (see :class:`StageFolder`): this only trains.
        """
        seed_everything(self.seed + self.rt.rank)
        if resume:
            self.resume()
        self._write_metrics()
        for epoch in range(self.start_epoch, self.config.epochs):
            began = time.perf_counter()
            metrics = {"stage": self.stage.name, "epoch": epoch + 1, **self._train_epoch(epoch), **self._validate(),
                       "lr": self.scheduler.get_last_lr()[0]}
            score = metrics[f"valid_{self.stage.select_on}"]
            if not math.isfinite(score):
                raise TrainingError(f"{self.stage.name} stage diverged: validation {self.stage.select_on} is {score} "
                                    f"at epoch {epoch + 1} (try a lower lr); the last good state is in "
                                    f"{self.folder.last}")
            improved = score < self.best
            if improved:
                self.best = score
                if self.rt.is_main:
                    self.model.save_pretrained(self.folder.best)
            metrics.update(best=improved, epoch_s=time.perf_counter() - began)
            self.history.append(metrics)
            self._checkpoint(epoch)
            self._write_metrics()
            if self.rt.is_main:
                logger.info("%s epoch %d/%d: %s", self.stage.name, epoch + 1, self.config.epochs,
                            ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
            self.rt.barrier()
        self._check_ranks_in_sync()
        if self.rt.is_main:
            self.folder.finish(self.settings, self.stage.start)
        self.rt.barrier()
        return self.folder.best

    def _check_ranks_in_sync(self) -> None:
        digests = self.rt.all_gather(weights_digest(self.model))
        if len(set(digests)) != 1:
            raise TrainingError(f"{self.stage.name} stage: ranks ended with different weights: {digests}")
        if self.rt.is_main:
            logger.info("%s stage done on %d rank(s); final weights sha1 %s", self.stage.name,
                        self.rt.world_size, digests[0])
