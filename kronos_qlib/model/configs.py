"""Configurations of the released NeoQuasar checkpoints, for building or finetuning them by name, and the
identities of their weights files as the Hub lists them."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError

RELEASED = {
    "NeoQuasar/Kronos-Tokenizer-base": dict(
        d_in=6, d_model=256, n_heads=4, ff_dim=512, n_enc_layers=4, n_dec_layers=4, ffn_dropout_p=0.0,
        attn_dropout_p=0.0, resid_dropout_p=0.0, s1_bits=10, s2_bits=10, beta=0.05, gamma0=1.0, gamma=1.1,
        zeta=0.05, group_size=4),
    "NeoQuasar/Kronos-Tokenizer-2k": dict(
        d_in=6, d_model=256, n_heads=4, ff_dim=512, n_enc_layers=4, n_dec_layers=4, ffn_dropout_p=0.0,
        attn_dropout_p=0.0, resid_dropout_p=0.0, s1_bits=10, s2_bits=10, beta=0.05, gamma0=1.0, gamma=1.1,
        zeta=0.05, group_size=5),
    "NeoQuasar/Kronos-mini": dict(
        s1_bits=10, s2_bits=10, n_layers=4, d_model=256, n_heads=4, ff_dim=512, ffn_dropout_p=0.2,
        attn_dropout_p=0.0, resid_dropout_p=0.2, token_dropout_p=0.0, learn_te=True),
    "NeoQuasar/Kronos-small": dict(
        s1_bits=10, s2_bits=10, n_layers=8, d_model=512, n_heads=8, ff_dim=1024, ffn_dropout_p=0.25,
        attn_dropout_p=0.1, resid_dropout_p=0.25, token_dropout_p=0.1, learn_te=True),
    "NeoQuasar/Kronos-base": dict(
        s1_bits=10, s2_bits=10, n_layers=12, d_model=832, n_heads=16, ff_dim=2048, ffn_dropout_p=0.2,
        attn_dropout_p=0.0, resid_dropout_p=0.2, token_dropout_p=0.0, learn_te=True),
}

#: The released checkpoints' pretraining data runs to about this month (the Kronos repository's issue #204): a
#: test period before it may lie inside what they saw.
PRETRAINING_END = "2024-02"


#: Hub id -> (Hub commit, bytes, sha256) of the released model.safetensors, as the Hub's file listings report them
#: (data to compare with, not a check to fail on: ``python -m kronos_qlib.model verify`` reports the match).
RELEASED_FILES = {
    "NeoQuasar/Kronos-Tokenizer-base": ("0e0117387f39004a9016484a186a908917e22426", 15_842_368,
                                        "59d85f6af76a2c3b8240ea06cb21db4213b4eeca053f246b23e29cf832fc6bee"),
    "NeoQuasar/Kronos-Tokenizer-2k": ("26966d0035065a0cae0ebad7af8ece35bc1fb51c", 15_842_376,
                                      "b97ec46b3b72160509e289183eaf7bdf5f0dac5bb9b49522f6d46638a99a8717"),
    "NeoQuasar/Kronos-mini": ("f4e68697d9d5aed55cef5c96aabc3376bcad9f81", 16_440_776,
                              "a7d5f37e2e9fbd9891f7d7d4f72574512dd1f704fee14223e0a8cd0fbf54197c"),
    "NeoQuasar/Kronos-small": ("901c26c1332695a2a8f243eb2f37243a37bea320", 98_980_656,
                               "b082dfcbd8e8c142a725c8bbb99781802f38fec81210e13479effb32b3c3e020"),
    "NeoQuasar/Kronos-base": ("2b554741eca47781b64468546e77fef3e85130e6", 409_264_008,
                              "abff193acab6db1a0368e9773e75799d11403b6d054ee6d5f0a11aeabc5f4b83"),
}


#: The revision that pins a released checkpoint to the Hub commit of the file RELEASED_FILES lists.
RELEASED_REVISION = "released"


def hub_revision(hub_id: str, revision: str | None) -> str | None:
    """The Hub revision to download ``hub_id`` at: None (or "") is the latest, ``released`` the commit listed in
    RELEASED_FILES, anything else a branch, tag or commit as given."""
    if revision != RELEASED_REVISION:
        return revision or None
    if hub_id not in RELEASED_FILES:
        raise CheckpointError(f"revision '{RELEASED_REVISION}' pins the released NeoQuasar checkpoints "
                              f"({', '.join(RELEASED_FILES)}), not '{hub_id}'")
    return RELEASED_FILES[hub_id][0]


def released_name(source: object) -> str | None:
    """The released checkpoint ``source`` is: its Hub id, or a local folder whose config.json is a released
    configuration (a copy, e.g. a git clone of the Hub repository); None otherwise."""
    if not isinstance(source, (str, Path)) or not source:
        return None
    if str(source) in RELEASED:
        return str(source)
    config = Path(source).expanduser() / "config.json"
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    return next((name for name, released_config in RELEASED.items() if values == released_config), None)


def released(*sources: object) -> list[str]:
    """The released NeoQuasar checkpoints among ``sources`` (Hub ids, folders, or False for none), by name."""
    return [name for name in map(released_name, sources) if name is not None]
