"""The tiny conformance checkpoints reproduce the original Kronos implementation's outputs."""
import json

import numpy as np
import pytest
import torch

from kronos_qlib import Kronos, KronosTokenizer

from conftest import CONFORMANCE

ATOL = RTOL = 1e-4  # conformance README: logits, hidden states and reconstructions


def close(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.detach().cpu().numpy(), expected, atol=ATOL, rtol=RTOL)


def test_tokenizer_encode_is_exact(tokenizer, vectors):
    x = torch.from_numpy(vectors["tok_x"])
    with torch.no_grad():
        s1, s2 = tokenizer.encode(x, half=True)
        full = tokenizer.encode(x)
    np.testing.assert_array_equal(s1.numpy(), vectors["tok_s1"])
    np.testing.assert_array_equal(s2.numpy(), vectors["tok_s2"])
    np.testing.assert_array_equal(full.numpy(), vectors["tok_full_index"])


def test_tokenizer_decode_half(tokenizer, vectors):
    s1, s2 = torch.from_numpy(vectors["tok_s1"]), torch.from_numpy(vectors["tok_s2"])
    with torch.no_grad():
        close(tokenizer.decode((s1, s2), half=True), vectors["tok_decode_half"])


def test_full_and_half_indices_decode_alike(tokenizer, vectors):
    """LSB-first indices: the full index is s1 + s2 << s1_bits, so both decodings agree."""
    s1, s2 = torch.from_numpy(vectors["tok_s1"]), torch.from_numpy(vectors["tok_s2"])
    full = torch.from_numpy(vectors["tok_full_index"])
    assert torch.equal(full, s1 + (s2 << tokenizer.s1_bits))
    with torch.no_grad():
        torch.testing.assert_close(tokenizer.decode(full), tokenizer.decode((s1, s2), half=True))


def test_tokenizer_forward(tokenizer, vectors):
    with torch.no_grad():
        (recon_s1, recon), loss, codes, indices = tokenizer(torch.from_numpy(vectors["tok_x"]))
    close(recon_s1, vectors["tok_forward_recon_s1"])
    close(recon, vectors["tok_forward_recon_full"])
    close(codes, vectors["tok_forward_quantized"])
    np.testing.assert_array_equal(indices.numpy(), vectors["tok_full_index"])
    # The codebook entropy is the analytical per-bit one: a group-softmax entropy misses by ~3e-3 relative.
    assert loss.item() == pytest.approx(float(vectors["tok_forward_bsq_loss"]), rel=RTOL, abs=1e-6)


def test_tokenizer_gradients_flow_straight_through(tokenizer, vectors):
    tokenizer.train()
    (recon_s1, recon), loss, _, _ = tokenizer(torch.from_numpy(vectors["tok_x"]))
    (recon.pow(2).mean() + recon_s1.pow(2).mean() + loss).backward()
    assert tokenizer.embed.weight.grad is not None and tokenizer.embed.weight.grad.abs().sum() > 0


@pytest.fixture()
def tokens(vectors):
    return (torch.from_numpy(vectors["tok_s1"]), torch.from_numpy(vectors["tok_s2"]),
            torch.from_numpy(vectors["pred_stamp"]))


def test_predictor_decode_s1(predictor, vectors, tokens):
    s1, s2, stamp = tokens
    with torch.no_grad():
        logits, context = predictor.decode_s1(s1, s2, stamp)
    close(logits, vectors["pred_decode_s1_logits"])
    close(context, vectors["pred_decode_s1_context"])
    np.testing.assert_array_equal(logits[:, -1].argmax(-1, keepdim=True).numpy(), vectors["pred_next_s1"])


def test_predictor_decode_s2_same_length_and_generation_step(predictor, vectors, tokens):
    s1, s2, stamp = tokens
    with torch.no_grad():
        _, context = predictor.decode_s1(s1, s2, stamp)
        close(predictor.decode_s2(context, s1), vectors["pred_decode_s2_logits_same_len"])
        last = predictor.decode_s2(context, torch.from_numpy(vectors["pred_next_s1"]))
    assert last.shape == (3, 1, 32)
    close(last[:, 0], vectors["pred_decode_s2_logits_last_query_len1"])


def test_predictor_cached_decoding_matches_full_window(predictor, vectors, tokens):
    """Prefill + one-token steps through the cache give the logits of a full recomputation."""
    s1, s2, stamp = tokens
    nxt = torch.from_numpy(vectors["pred_next_s1"])
    with torch.no_grad():
        cache = predictor.new_cache(48)
        logits, context = predictor.decode_s1(s1[:, :40], s2[:, :40], stamp[:, :40], cache)
        for t in range(40, 48):
            logits, context = predictor.decode_s1(s1[:, t:t + 1], s2[:, t:t + 1], stamp[:, t:t + 1], cache)
        close(logits[:, -1], vectors["pred_decode_s1_logits"][:, -1])
        close(predictor.decode_s2(context, nxt, cache)[:, 0], vectors["pred_decode_s2_logits_last_query_len1"])


def test_predictor_teacher_forcing_train_mode(predictor, vectors, tokens):
    s1, s2, stamp = tokens
    predictor.train()
    s1_logits, s2_logits = predictor(s1[:, :-1], s2[:, :-1], stamp[:, :-1], use_teacher_forcing=True,
                                     s1_targets=s1[:, 1:])
    close(s1_logits, vectors["pred_train_teacher_forcing_s1_logits"])
    close(s2_logits, vectors["pred_train_teacher_forcing_s2_logits"])
    losses = predictor.compute_loss(s1_logits, s2_logits, s1[:, 1:], s2[:, 1:])
    np.testing.assert_allclose([x.item() for x in losses], vectors["pred_train_loss"], rtol=RTOL)
    losses[0].backward()
    assert predictor.dep_layer.cross_attn.q_proj.weight.grad.abs().sum() > 0


def test_dtype_follows_the_module(tokenizer, predictor, vectors, tokens):
    """Nothing is hard-coded to float32: a float64 copy computes the same tokens and logits in float64."""
    x = torch.from_numpy(vectors["tok_x"])
    tok64, pred64 = tokenizer.double(), predictor.double()
    with torch.no_grad():
        s1, s2 = tok64.encode(x, half=True)
        bars = tok64.decode((s1, s2), half=True)
        logits, _ = pred64.decode_s1(*tokens)
    np.testing.assert_array_equal(s1.numpy(), vectors["tok_s1"])
    assert bars.dtype == torch.float64 and logits.dtype == torch.float64
    close(logits, vectors["pred_decode_s1_logits"])


def test_bfloat16_runs(tokenizer, predictor, vectors, tokens):
    with torch.no_grad():
        bars = tokenizer.to(torch.bfloat16).decode(tokens[:2], half=True)
        logits, _ = predictor.to(torch.bfloat16).decode_s1(*tokens)
    assert bars.dtype == logits.dtype == torch.bfloat16
    assert torch.isfinite(bars.float()).all() and torch.isfinite(logits.float()).all()


LAYOUTS = json.loads((CONFORMANCE / "official_layouts.json").read_text())


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_released_layouts(name):
    entry = LAYOUTS[name]
    cls = KronosTokenizer if entry["kind"] == "tokenizer" else Kronos
    model = cls(**entry["config"])
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == entry["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == entry["n_params"]


def test_released_configs_in_code_match_the_layouts():
    from kronos_qlib.model.configs import RELEASED

    assert {k.split("/")[1]: v for k, v in RELEASED.items()} == {k: v["config"] for k, v in LAYOUTS.items()}
