"""Configurations of the released NeoQuasar checkpoints, for building or finetuning them by name."""

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


def released(*sources: object) -> list[str]:
    """The released NeoQuasar checkpoints (Hub ids) among ``sources`` (ids, folders, or False for none)."""
    return [s for s in sources if isinstance(s, str) and s.startswith("NeoQuasar/")]
