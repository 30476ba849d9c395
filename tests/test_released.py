"""Released checkpoints a run can vouch for: a local copy is recognised as released, a changed weights file is
named with both hashes, a loaded network names its file and Hub commit, a revision pins it, and
``python -m kronos_qlib.model verify`` says what a folder holds or why it is broken."""
import logging
import shutil
import subprocess
import sys

import pytest
import torch

from kronos_qlib import CheckpointError, ConfigError, Kronos
from kronos_qlib.model.configs import RELEASED, RELEASED_FILES, released
from kronos_qlib.model.hub import file_sha256
from kronos_qlib.training.config import network_revision


def released_layout_with_other_weights(folder):
    torch.manual_seed(0)
    Kronos(**RELEASED["NeoQuasar/Kronos-mini"]).save_pretrained(folder)
    return folder


def test_a_local_copy_of_a_released_config_is_released(tmp_path, predictor_dir):
    copy = released_layout_with_other_weights(tmp_path / "Kronos-mini")
    assert released(str(copy), "NeoQuasar/Kronos-small", str(predictor_dir), False) == [
        "NeoQuasar/Kronos-mini", "NeoQuasar/Kronos-small"]


def test_other_weights_under_a_released_config_warn_with_both_hashes(tmp_path, caplog):
    copy = released_layout_with_other_weights(tmp_path / "Kronos-mini")
    with caplog.at_level(logging.INFO, logger="kronos_qlib.model.hub"):
        Kronos.from_pretrained(copy)
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert file_sha256(copy / "model.safetensors") in warning.getMessage()
    assert RELEASED_FILES["NeoQuasar/Kronos-mini"][2] in warning.getMessage()


def verify(source):
    return subprocess.run([sys.executable, "-m", "kronos_qlib.model", "verify", str(source)], capture_output=True,
                          text=True, timeout=300)


def test_verify_reports_a_folder_and_refuses_a_broken_one(tmp_path, predictor_dir):
    good = verify(predictor_dir)
    assert good.returncode == 0, good.stderr
    assert "network:    Kronos" in good.stdout and "not a released checkpoint" in good.stdout
    assert file_sha256(predictor_dir / "model.safetensors") in good.stdout
    changed = verify(released_layout_with_other_weights(tmp_path / "Kronos-mini"))
    assert changed.returncode == 0 and "NOT its released weights file" in changed.stdout
    pointer = tmp_path / "pointer"
    shutil.copytree(predictor_dir, pointer)
    (pointer / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")
    broken = verify(pointer)
    assert broken.returncode == 1 and "Git LFS pointer" in broken.stderr
    assert verify(tmp_path / "missing").returncode == 1


def test_a_folder_load_names_its_file_and_no_commit(predictor_dir):
    assert Kronos.from_pretrained(predictor_dir).origin == {
        "source": str(predictor_dir), "revision": None, "sha256": file_sha256(predictor_dir / "model.safetensors")}


def test_a_hub_load_names_its_commit_and_released_pins_the_listed_one(tmp_path, fake_hub):
    """The Hub cache names a snapshot by its commit; ``revision: released`` asks for the commit RELEASED_FILES
    lists (here a fake cache answers, as the Hub is not reachable)."""
    commit = RELEASED_FILES["NeoQuasar/Kronos-mini"][0]
    snapshot = released_layout_with_other_weights(tmp_path / "models--NeoQuasar--Kronos-mini" / "snapshots" / commit)
    asked = []

    def download(repo_id, filename, revision, **kwargs):
        asked.append(revision)
        return str(snapshot / filename)

    fake_hub(download)
    model = Kronos.from_pretrained("NeoQuasar/Kronos-mini", revision="released")
    assert asked and set(asked) == {commit}
    assert model.origin == {"source": "NeoQuasar/Kronos-mini", "revision": commit,
                            "sha256": file_sha256(snapshot / "model.safetensors")}
    with pytest.raises(CheckpointError, match="pins the released NeoQuasar checkpoints"):
        Kronos.from_pretrained("someone/Kronos-finetune", revision="released")


def test_a_revision_for_both_networks_or_one_each():
    assert network_revision("released", "tokenizer") == "released"
    assert network_revision({"predictor": "abc123"}, "predictor") == "abc123"
    assert network_revision({"predictor": "abc123"}, "tokenizer") is None
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['predicter'\]"):
        network_revision({"predicter": "abc123"}, "predictor")
