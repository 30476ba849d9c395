"""Fill the forecast cache of a workflow's KronosModel, in one process or many under torchrun; a later
``qrun`` of the same workflow then reads the cache and samples nothing.

    python scripts/forecast.py --workflow workflows/kronos_csi300.yaml                 # its test segment
    torchrun --standalone --nproc_per_node=4 scripts/forecast.py --workflow workflows/kronos_csi300.yaml
    python scripts/forecast.py --workflow workflows/kronos_csi300.yaml --start 2021-01-04 --end 2021-06-30

The workflow is read as qrun reads it (its environment variables apply). Its model is fitted first: finished
training stages are reused, unfinished ones trained (under torchrun, with DDP). Each process then takes every
n-th trading day (n processes) and writes whole day files; a series' paths do not depend on the split, so n
processes write the same cache as one. Several nodes run the same command with torchrun's --nnodes and
--rdzv-endpoint and a cache folder (KRONOS_CACHE) and output_dir that all of them share. A killed run resumes:
days already in the cache are not sampled again.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from qlib.utils import init_instance_by_config

from kronos_qlib.data import init_qlib
from kronos_qlib.errors import CheckpointError, ConfigError, KronosInputError, TrainingError
from kronos_qlib.qrun import load_workflow
from kronos_qlib.training.distributed import setup, teardown

logger = logging.getLogger("kronos_qlib.forecast")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", required=True, help="a qrun workflow whose model is a KronosModel")
    parser.add_argument("--segment", default="test", help="the dataset segment to forecast (default: test)")
    parser.add_argument("--start", help="first day to forecast (YYYY-MM-DD), with --end instead of --segment")
    parser.add_argument("--end", help="last day to forecast (YYYY-MM-DD)")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    runtime = setup()
    try:
        if (args.start is None) != (args.end is None):
            raise ConfigError("--start and --end go together")
        segment = slice(args.start, args.end) if args.start else args.segment
        config = load_workflow(args.workflow)
        init_qlib(config["qlib_init"]["provider_uri"], config["qlib_init"].get("region", "cn"))
        task = config["task"]
        if task["model"].get("class") != "KronosModel":
            raise ConfigError(f"{args.workflow}: its model is {task['model'].get('class')}, not KronosModel")
        dataset = init_instance_by_config(task["dataset"])
        model = init_instance_by_config(task["model"])
        model.fit(dataset)
        sampled, cached = model.fill_cache(dataset, segment, shard=(runtime.rank, runtime.world_size))
        totals = runtime.all_reduce_sum([sampled, cached])
        if runtime.is_main:
            logger.info("%d processes: %d forecasts sampled, %d already cached, in %s", runtime.world_size,
                        totals[0], totals[1], model.forecast_folder)
    except (ConfigError, KronosInputError, CheckpointError, TrainingError) as err:
        print(f"error: {err}", file=sys.stderr)
        teardown(exit_code=2)
    teardown()


if __name__ == "__main__":
    main()
