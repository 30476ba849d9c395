"""Hub-layout loading and saving, and the errors a user sees when a checkpoint is unusable."""
import json
import os
import shutil

import pytest
import torch

from kronos_qlib import CheckpointError, Kronos, KronosTokenizer


def test_round_trip_gives_identical_outputs(tokenizer, predictor, vectors, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    predictor.save_pretrained(tmp_path / "pred")
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path / "tok"))
    assert not [n for n in os.listdir(tmp_path / "tok") if n.startswith(".saving-")]
    tok2 = KronosTokenizer.from_pretrained(tmp_path / "tok")
    pred2 = Kronos.from_pretrained(tmp_path / "pred")
    assert json.loads((tmp_path / "pred" / "config.json").read_text()) == predictor._hub_mixin_config
    x = torch.from_numpy(vectors["tok_x"])
    s1, s2 = torch.from_numpy(vectors["tok_s1"]), torch.from_numpy(vectors["tok_s2"])
    stamp = torch.from_numpy(vectors["pred_stamp"])
    with torch.no_grad():
        assert torch.equal(tok2.decode(tok2.encode(x)), tokenizer.decode(tokenizer.encode(x)))
        assert torch.equal(pred2.decode_s1(s1, s2, stamp)[0], predictor.decode_s1(s1, s2, stamp)[0])


def test_saving_over_an_existing_checkpoint_replaces_it(predictor, tmp_path):
    predictor.save_pretrained(tmp_path)
    with torch.no_grad():
        predictor.norm.weight.add_(1.0)
    predictor.save_pretrained(tmp_path)
    assert torch.equal(Kronos.from_pretrained(tmp_path).norm.weight, predictor.norm.weight)


def test_config_overrides(predictor_dir):
    model = Kronos.from_pretrained(predictor_dir, ffn_dropout_p=0.1)
    assert model.transformer[0].ffn.ffn_dropout.p == 0.1


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    os.chmod(dst, 0o755)
    for name in os.listdir(dst):
        os.chmod(dst / name, 0o644)
    return dst


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Kronos.from_pretrained(tmp_path / "nowhere" / "ckpt")


def test_folder_without_weights(predictor_dir, tmp_path):
    folder = copy_checkpoint(predictor_dir, tmp_path / "ckpt")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        Kronos.from_pretrained(folder)


def test_malformed_config(predictor_dir, tmp_path):
    folder = copy_checkpoint(predictor_dir, tmp_path / "ckpt")
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Kronos.from_pretrained(folder)


def test_config_with_wrong_keys(predictor_dir, tmp_path):
    folder = copy_checkpoint(predictor_dir, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = config.pop("n_layers")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing keys \['n_layers'\], unknown keys \['n_layer'\]"):
        Kronos.from_pretrained(folder)


def test_tokenizer_config_is_not_a_predictor(tokenizer_dir):
    with pytest.raises(CheckpointError, match="does not describe a Kronos"):
        Kronos.from_pretrained(tokenizer_dir)


def test_corrupt_weights(predictor_dir, tmp_path):
    folder = copy_checkpoint(predictor_dir, tmp_path / "ckpt")
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        Kronos.from_pretrained(folder)


def test_weights_of_another_config(predictor_dir, tmp_path):
    folder = copy_checkpoint(predictor_dir, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["n_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing \['transformer\.2\."):
        Kronos.from_pretrained(folder)


def test_unreachable_hub_id(tmp_path):
    """A Hub id that is not cached and cannot be fetched names the id; no network is touched."""
    with pytest.raises(CheckpointError, match="could not load 'NeoQuasar/Kronos-nonexistent'.*Hugging Face Hub"):
        Kronos.from_pretrained("NeoQuasar/Kronos-nonexistent", cache_dir=tmp_path, local_files_only=True)


def test_hub_id_is_resolved_through_the_hub_cache(predictor_dir, fake_hub):
    """A Hub id goes through hf_hub_download (here answered from a fake cache, as offline users get)."""
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs["revision"]))
        return str(predictor_dir / filename)

    fake_hub(fake_download)
    model = Kronos.from_pretrained("NeoQuasar/Kronos-mini", revision="v1")
    assert set(calls) == {("NeoQuasar/Kronos-mini", "config.json", "v1"),
                          ("NeoQuasar/Kronos-mini", "model.safetensors", "v1")}
    assert not model.training


@pytest.mark.parametrize("key, value, message", [
    ("d_model", "64", "d_model must be int, got '64' (str)"),
    ("learn_te", 1, "learn_te must be bool, got 1 (int)"),
    ("ffn_dropout_p", "0.1", "ffn_dropout_p must be float, got '0.1' (str)"),
    ("n_layers", True, "n_layers must be int, got True (bool)")])
def test_config_value_of_the_wrong_type(predictor_dir, tmp_path, key, value, message):
    """A wrong type in config.json names the key and the file instead of failing deep inside torch."""
    folder = copy_checkpoint(predictor_dir, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"{folder / 'config.json'}: {message}".replace("(", r"\(")
                       .replace(")", r"\)")):
        Kronos.from_pretrained(folder)


def test_non_finite_weights_are_refused(predictor, tmp_path):
    """NaN weights would load and give plausible paths (a NaN distribution draws the last token)."""
    with torch.no_grad():
        predictor.head.proj_s1.weight[3, 5] = float("nan")
    predictor.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"model.safetensors holds non-finite weights \(NaN or inf\) in "
                                              r"head.proj_s1.weight"):
        Kronos.from_pretrained(tmp_path / "ckpt")


def test_git_lfs_pointer_says_what_to_do(predictor_dir, tmp_path):
    """A folder cloned without git-lfs holds a ~130-byte pointer in place of model.safetensors."""
    folder = tmp_path / "cloned"
    shutil.copytree(predictor_dir, folder)
    (folder / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:b082dfcbd8e8c142a725c8bbb99781802f38fec81210e13479effb32b3c3e020\nsize 98980656\n")
    with pytest.raises(CheckpointError, match="Git LFS pointer .*git lfs pull"):
        Kronos.from_pretrained(folder)
