"""One process or many under torchrun: process group, device, and a clean exit.

Under torchrun (RANK/WORLD_SIZE in the environment) the process group uses NCCL when CUDA is present and gloo
otherwise; torchrun's own flags (--nnodes, --rdzv-endpoint, ...) take a run across several nodes.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64 on the communication device)."""
        if not dist.is_initialized():
            return values
        comm_device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.tensor(values, dtype=torch.float64, device=comm_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def all_gather(self, value) -> list:
        if not dist.is_initialized():
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: str | None = None) -> Runtime:
    """Join the process group when launched by torchrun; pick the device (CUDA if present unless given)."""
    if not launched_by_torchrun():
        chosen = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Runtime(device=chosen)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device("cpu")
        # two CPU workers sharing the cores must not each start a thread per core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    logger.info("rank %d/%d on %s (%s)", rank, world, chosen, dist.get_backend())
    return Runtime(rank, world, local_rank, chosen)


def teardown(exit_code: int = 0, exit_process: bool | None = None) -> None:
    """Leave the process group; under torchrun also end the worker with ``os._exit``.

    gloo workers on CPU have been seen to die with SIGABRT in interpreter shutdown after all work was done
    (about 5% of launches); flushing and leaving through ``os._exit`` after a clean shutdown avoids it.
    A failing rank skips the final barrier, which its peers may never reach.
    """
    if dist.is_initialized():
        if exit_code == 0:
            dist.barrier()
        dist.destroy_process_group()
    if exit_process is None:
        exit_process = launched_by_torchrun()
    if exit_process:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    if exit_code:
        sys.exit(exit_code)
