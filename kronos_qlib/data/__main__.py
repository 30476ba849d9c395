"""Check a Qlib daily data folder before a run:

    python -m kronos_qlib.data check --provider ~/.qlib/qlib_data/cn_data --market csi300 \\
        --start 2010-01-01 --end 2022-12-30 --backtest-end 2022-12-29

Exit code 0: usable (warnings say what only weakens a run); 1: errors that would break a run; 2: bad arguments.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .check import check_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kronos_qlib.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check a Qlib daily data folder for a Kronos run")
    check.add_argument("--provider", required=True, help="the Qlib data folder (qlib_init's provider_uri)")
    check.add_argument("--market", default="csi300", help="the market whose members are checked")
    check.add_argument("--benchmark", default="SH000300", help="the backtest's benchmark code")
    check.add_argument("--start", help="the first day a run reads (the handler's start_time)")
    check.add_argument("--end", help="the last day a run reads (the handler's end_time): within the calendar")
    check.add_argument("--backtest-end", help="the backtest's end_time: a trading day before the calendar's end")
    check.add_argument("--history", type=int, default=0, help="trading days of history wanted before --start")
    check.add_argument("--sample", type=int, default=100, help="members whose values are checked (0: all)")
    args = parser.parse_args(argv)
    try:
        report = check_data(args.provider, args.market, args.start, args.end, backtest_end=args.backtest_end,
                            benchmark=args.benchmark, history=args.history, sample=args.sample or None)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
