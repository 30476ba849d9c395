"""``python -m kronos_qlib.model verify FOLDER_OR_HUB_ID``: what a checkpoint holds, and whether it loads.

Prints the network its config builds, the config, whether it is a released NeoQuasar checkpoint (by Hub id or a
local copy's config) and whether its weights file is the released one, and the file's bytes and sha256. Exits 1,
saying why, on a broken checkpoint: a missing file, a Git LFS pointer, unreadable weights, a config that does not
build the network or weights that do not fit it.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import CheckpointError
from .configs import RELEASED_FILES, released_name
from .hub import _resolve_files, file_sha256, init_arg_mismatch
from .predictor import Kronos
from .return_head import ReturnHead
from .tokenizer import KronosTokenizer

NETWORKS = (KronosTokenizer, Kronos, ReturnHead)


def verify(source: str, revision: str | None = None) -> list[str]:
    """The report's lines; raises CheckpointError on a broken checkpoint."""
    config_file, weights_file = _resolve_files(source, revision=revision)
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_file} is not valid JSON: {err}") from err
    cls = next((c for c in NETWORKS if isinstance(config, dict) and init_arg_mismatch(c, config) == ([], [])), None)
    if cls is None:
        raise CheckpointError(f"{config_file} builds none of {', '.join(c.__name__ for c in NETWORKS)}")
    cls.from_pretrained(source, revision=revision)  # refuses pointers, damaged or mismatched weights
    name, digest = released_name(source), file_sha256(weights_file)
    if name is None:
        identity = "not a released checkpoint"
    elif digest == RELEASED_FILES[name][2]:
        identity = f"released {name}, the released weights file (Hub commit {RELEASED_FILES[name][0]})"
    else:
        identity = f"configuration of {name}, but NOT its released weights file (released sha256 " \
                   f"{RELEASED_FILES[name][2]})"
    return [f"checkpoint: {source}", f"network:    {cls.__name__}", f"config:     {json.dumps(config, sort_keys=True)}",
            f"identity:   {identity}", f"weights:    {weights_file} ({weights_file.stat().st_size:,} bytes)",
            f"sha256:     {digest}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kronos_qlib.model", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="check a checkpoint folder or Hub id and print what it holds")
    check.add_argument("source", help="a local folder or a Hub id such as NeoQuasar/Kronos-small")
    check.add_argument("--revision", help="the Hub revision (branch, tag or commit) to check")
    args = parser.parse_args(argv)
    try:
        print("\n".join(verify(args.source, args.revision)))
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
