"""Get Qlib CN daily data (the community dataset Qlib's README points to, or another archive), checked:

    python scripts/get_data.py --target ~/.qlib/qlib_data/cn_data
    python scripts/get_data.py --target DIR --source https://.../qlib_bin.tar.gz    # or a local .tar.gz/.tgz/.zip
    python scripts/get_data.py --target DIR --force                                 # replace an existing folder

The folder appears at --target only once it is complete and passes `python -m kronos_qlib.data check`.
"""
from __future__ import annotations

import argparse
import sys

from kronos_qlib.data.download import DEFAULT_SOURCE, get_data
from kronos_qlib.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="the Qlib data folder to create (QLIB_DATA)")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="a URL or a local archive (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace an existing --target")
    parser.add_argument("--market", default="csi300", help="the market the data must serve")
    parser.add_argument("--benchmark", default="SH000300", help="the benchmark the data must hold")
    args = parser.parse_args(argv)
    try:
        report = get_data(args.target, args.source, force=args.force, market=args.market, benchmark=args.benchmark)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report)
    print(f"\nready: QLIB_DATA={report.provider}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
