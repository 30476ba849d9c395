"""Two-stage finetuning with tiny models on a few months of CSI300: one process, torchrun, resume, skip."""
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kronos_qlib import CheckpointError, ConfigError, ForecastSpec, Kronos, KronosTokenizer, TrainingError
from kronos_qlib.model.hub import file_sha256, weights_digest
from kronos_qlib.training import PRESETS, SequentialTrainer, config_from_dict, load_config
from kronos_qlib.training.distributed import Runtime
from kronos_qlib.training.stage_folder import StageFolder

from conftest import CN_DATA, REPO

STAGE = dict(epochs=2, batch_size=16, max_train_windows=256, max_valid_windows=128)
TINY_TOKENIZER, TINY_PREDICTOR = PRESETS["tiny"]["tokenizer_config"], PRESETS["tiny"]["predictor_config"]


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data-cache"))


def tiny_config(out_dir, data_cache, **overrides) -> dict:
    config = {
        "output_dir": str(out_dir), "seed": 3, "device": "cpu",
        "data": {"provider_uri": str(CN_DATA), "market": "csi300", "train": ["2016-01-01", "2016-06-30"],
                 "valid": ["2016-07-01", "2016-08-31"], "test": ["2016-09-01", "2016-10-31"], "cache_dir": data_cache},
        "forecast": {"lookback": 20, "pred_len": 5},
        "pre_trained_tokenizer": False, "pre_trained_predictor": False,
        "tokenizer_config": TINY_TOKENIZER, "predictor_config": TINY_PREDICTOR,
        "tokenizer_training": dict(STAGE, lr=1e-3), "predictor_training": dict(STAGE, lr=1e-3),
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data_cache):
    """One complete two-stage run, shared by the tests that only read its results."""
    out = tmp_path_factory.mktemp("run")
    paths = SequentialTrainer(config_from_dict(tiny_config(out, data_cache))).run()
    return out, paths


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_both_stages_in_one_process(trained):
    out, paths = trained
    assert paths == {"tokenizer": out / "tokenizer" / "best", "predictor": out / "predictor" / "best"}
    tokenizer = KronosTokenizer.from_pretrained(paths["tokenizer"])
    predictor = Kronos.from_pretrained(paths["predictor"])
    assert (tokenizer.s1_bits, predictor.s1_bits) == (4, 4)
    for stage, keys in [("tokenizer", {"train_loss", "valid_recon", "valid_recon_s1", "valid_bsq"}),
                        ("predictor", {"train_loss", "train_s1", "train_s2", "valid_loss", "valid_s1", "valid_s2"})]:
        rows = read_metrics(out / stage / "metrics.jsonl")
        assert [r["epoch"] for r in rows] == [1, 2]
        assert keys | {"lr", "samples_per_s", "epoch_s"} <= set(rows[0])
        assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    first, last = read_metrics(out / "predictor" / "metrics.jsonl")
    assert last["train_loss"] < first["train_loss"], "two epochs should lower the training loss"
    assert first["valid_loss"] < torch.log(torch.tensor(16.0)).item() * 1.05, "better than a uniform guess"


@pytest.mark.parametrize("resume", [False, True])
def test_skip_existing(trained, data_cache, caplog, resume):
    """A finished stage with the same settings is reused, with --resume too (KronosModel always resumes)."""
    out, paths = trained
    stamp = {p: (p / "model.safetensors").stat().st_mtime_ns for p in paths.values()}
    with caplog.at_level(logging.INFO):
        again = SequentialTrainer(config_from_dict(tiny_config(out, data_cache, skip_existing=True)),
                                  resume=resume).run()
    assert again == paths
    assert {p: (p / "model.safetensors").stat().st_mtime_ns for p in paths.values()} == stamp
    assert caplog.text.count("reused") == 2


def test_done_json_names_the_weights_each_stage_started_from(trained, data_cache, tmp_path, caplog):
    """Random weights by their seed, a checkpoint by its source, Hub commit (none for a folder) and file hash; a
    stage finished before these were recorded is still reused."""
    out, paths = trained
    random = {"source": "random", "seed": 3}
    tokenizer = {"source": str(paths["tokenizer"]), "revision": None,
                 "sha256": file_sha256(paths["tokenizer"] / "model.safetensors")}
    assert StageFolder(out / "tokenizer", "tokenizer").start() == {"tokenizer": random}
    assert StageFolder(out / "predictor", "predictor").start() == {"predictor": random, "tokenizer": tokenizer}
    older = shutil.copytree(out, tmp_path / "older")
    for stage in ("tokenizer", "predictor"):
        done = older / stage / "done.json"
        done.write_text(json.dumps({k: v for k, v in json.loads(done.read_text()).items() if k != "start"}))
    with caplog.at_level(logging.INFO):
        SequentialTrainer(config_from_dict(tiny_config(older, data_cache))).run()
    assert caplog.text.count("reused") == 2


def predictor_run(out_dir, trained, data_cache, resume=False):
    config = tiny_config(out_dir, data_cache, train_tokenizer=False,
                         pre_trained_tokenizer=str(trained[1]["tokenizer"]),
                         predictor_training=dict(STAGE, epochs=3, lr=1e-3))
    return SequentialTrainer(config_from_dict(config), resume=resume).run()


def test_killed_run_resumes_to_the_same_weights(trained, data_cache, tmp_path, monkeypatch):
    reference = predictor_run(tmp_path / "straight", trained, data_cache)["predictor"]

    crash_after_epochs(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        predictor_run(tmp_path / "killed", trained, data_cache)
    assert read_metrics(tmp_path / "killed" / "predictor" / "metrics.jsonl") == [], "killed before logging"
    torch.manual_seed(12345)  # whatever the process did in between must not matter
    resumed = predictor_run(tmp_path / "killed", trained, data_cache, resume=True)["predictor"]

    expected, actual = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    final_a = torch.load(reference.parent / "last.pt", weights_only=False)["model"]
    final_b = torch.load(resumed.parent / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert [r["epoch"] for r in read_metrics(resumed.parent / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.slow
def test_torchrun_two_ranks(trained, data_cache, tmp_path):
    """gloo DDP on two CPU processes: same weights on both ranks (checked by the run), one set of files."""
    out = tmp_path / "ddp"
    config_file = tmp_path / "ddp.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(out, data_cache)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(REPO / "scripts" / "train_sequential.py"), "--config", str(config_file)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    for stage in ("tokenizer", "predictor"):
        assert f"{stage} stage done on 2 rank(s)" in log
        files = sorted(p.name for p in (out / stage).iterdir())
        assert files == ["best", "done.json", "last.pt", "metrics.jsonl"]
        assert sorted(p.name for p in (out / stage / "best").iterdir()) == ["README.md", "config.json",
                                                                            "model.safetensors"]
        assert [r["epoch"] for r in read_metrics(out / stage / "metrics.jsonl")] == [1, 2], "rank 0 logs alone"
    assert "different weights" not in log


def crash_after_epochs(monkeypatch, epochs: int) -> None:
    """Make the training process die right after its ``epochs``-th checkpoint is written."""
    import kronos_qlib.training.loop as loop
    real_save, written = loop.save_atomic, []

    def save_then_die(obj, path):
        real_save(obj, path)
        written.append(path)
        if len(written) == epochs:
            monkeypatch.setattr(loop, "save_atomic", real_save)
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_atomic", save_then_die)


def folder_state(folder):
    """What a user made in a stage folder: file -> bytes (best/ by its weights)."""
    files = [folder / "last.pt", folder / "metrics.jsonl", folder / "best" / "model.safetensors"]
    return {f.name: f.read_bytes() for f in files if f.exists()}


def test_a_crashed_stage_is_refused_without_resume_and_continued_with_it(trained, data_cache, tmp_path,
                                                                         monkeypatch):
    """After a crash, a plain re-run neither skips the unfinished stage nor silently starts it over."""
    out = tmp_path / "crashed"
    crash_after_epochs(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        predictor_run(out, trained, data_cache)
    folder = out / "predictor"
    assert [r["epoch"] for r in read_metrics(folder / "metrics.jsonl")] == [1], "died before logging epoch 2"
    assert not (folder / "done.json").exists()
    before = folder_state(folder)
    with pytest.raises(ConfigError, match=r"predictor holds an unfinished predictor run \(1 epoch\(s\) logged\): "
                                          r"pass --resume to continue it"):
        predictor_run(out, trained, data_cache)
    assert folder_state(folder) == before, "the refused run must not touch the folder"
    predictor_run(out, trained, data_cache, resume=True)
    assert [r["epoch"] for r in read_metrics(folder / "metrics.jsonl")] == [1, 2, 3]
    assert (folder / "done.json").exists()


def test_cli_refuses_a_crashed_stage_naming_resume(trained, data_cache, tmp_path, monkeypatch):
    out = tmp_path / "cli"
    crash_after_epochs(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        predictor_run(out, trained, data_cache)
    config_file = tmp_path / "cli.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(out, data_cache, train_tokenizer=False,
                                                      pre_trained_tokenizer=str(trained[1]["tokenizer"]),
                                                      predictor_training=dict(STAGE, epochs=3, lr=1e-3))))
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train_predictor.py"), "--config",
                             str(config_file)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {out / 'predictor'} holds an unfinished predictor run" in result.stderr
    assert "pass --resume" in result.stderr


def test_finished_stage_with_other_settings_is_an_error(trained, data_cache):
    out, _ = trained
    changed = tiny_config(out, data_cache, tokenizer_training=dict(STAGE, lr=5e-4))
    with pytest.raises(ConfigError, match=r"holds a tokenizer trained with other settings \(they differ in "
                                          r"\['training'\]\)"):
        SequentialTrainer(config_from_dict(changed)).run()


def test_refused_resume_leaves_a_finished_stage_finished(trained, data_cache, caplog):
    """--resume with other settings on a finished stage is refused and deletes nothing: done.json stays, and the
    next plain run reuses the stage."""
    out, paths = trained
    done = (out / "tokenizer" / "done.json").read_text()
    changed = tiny_config(out, data_cache, tokenizer_training=dict(STAGE, epochs=3))
    with pytest.raises(ConfigError, match="holds a tokenizer trained with other settings"):
        SequentialTrainer(config_from_dict(changed), resume=True).run()
    assert (out / "tokenizer" / "done.json").read_text() == done
    with caplog.at_level(logging.INFO):
        assert SequentialTrainer(config_from_dict(tiny_config(out, data_cache))).run() == paths
    assert caplog.text.count("reused") == 2


def test_resume_with_other_settings_is_an_error(trained, data_cache, tmp_path, monkeypatch):
    """An unfinished stage resumed with other settings: refused, its files untouched."""
    out = tmp_path / "other"
    crash_after_epochs(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        predictor_run(out, trained, data_cache)
    before = folder_state(out / "predictor")
    changed = tiny_config(out, data_cache, train_tokenizer=False, pre_trained_tokenizer=str(trained[1]["tokenizer"]),
                          predictor_training=dict(STAGE, epochs=3, lr=5e-4))
    with pytest.raises(ConfigError, match="last.pt was written with other settings"):
        SequentialTrainer(config_from_dict(changed), resume=True).run()
    assert folder_state(out / "predictor") == before


def test_resume_from_a_truncated_last_pt_names_the_file(trained, data_cache, tmp_path, monkeypatch):
    out = tmp_path / "truncated"
    crash_after_epochs(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        predictor_run(out, trained, data_cache)
    last = out / "predictor" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"{last} cannot be read .*: the file is damaged"):
        predictor_run(out, trained, data_cache, resume=True)


def test_training_again_with_skip_existing_false(trained, data_cache, tmp_path):
    out = tmp_path / "again"
    predictor_run(out, trained, data_cache)
    config = tiny_config(out, data_cache, train_tokenizer=False, pre_trained_tokenizer=str(trained[1]["tokenizer"]),
                         skip_existing=False, predictor_training=dict(STAGE, epochs=1, lr=1e-3))
    SequentialTrainer(config_from_dict(config)).run()
    assert [r["epoch"] for r in read_metrics(out / "predictor" / "metrics.jsonl")] == [1]
    assert json.loads((out / "predictor" / "done.json").read_text())["training"]["epochs"] == 1


def test_diverged_training_stops_with_a_clear_error(trained, data_cache, tmp_path, monkeypatch):
    import kronos_qlib.training.loop as loop

    monkeypatch.setattr(loop.StageTrainer, "_validate",
                        lambda self: {f"valid_{k}": float("nan") for k in self.stage.metrics})
    with pytest.raises(TrainingError, match="predictor stage diverged: validation loss is nan at epoch 1"):
        predictor_run(tmp_path / "nan", trained, data_cache)


def test_weights_digest_tells_models_apart():
    a, b = Kronos(**TINY_PREDICTOR), Kronos(**TINY_PREDICTOR)
    assert weights_digest(a) != weights_digest(b)
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)


def test_single_process_runtime_reduces_nothing():
    assert Runtime().all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]


# ----------------------------------------------------------------------------------------------- configuration
def refused(path, text: str, match: str) -> None:
    """``text`` written to ``path`` is refused by load_config with an error matching ``match``."""
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_unknown_yaml_keys_are_named(tmp_path):
    path = tmp_path / "bad.yaml"
    refused(path, "preset: cpu\noutput_dirr: runs/x\n", "unknown key 'output_dirr' in .*bad.yaml")
    refused(path, "predictor_training:\n  learning_rate: 0.1\n",
            r"unknown key 'learning_rate' in .*bad.yaml\.predictor_training")
    refused(path, "data:\n  markt: csi300\n", r"unknown key 'markt' in .*bad.yaml\.data")
    refused(path, "data:\n  lookback: 30\n", r"unknown key 'lookback' in .*bad.yaml\.data")  # it is forecast's


def test_yaml_values_are_checked(tmp_path):
    path = tmp_path / "typed.yaml"
    path.write_text("predictor_training:\n  lr: 1e-3\n  epochs: 2\n")  # YAML 1.1 reads 1e-3 as a string
    assert load_config(path).predictor_training.lr == 1e-3
    refused(path, "predictor_training:\n  lr: fast\n", r"predictor_training\.lr must be float, got 'fast'")
    refused(path, "tokenizer_training:\n  epochs: 1.5\n", r"tokenizer_training\.epochs must be int, got 1\.5")
    path.write_text("data:\n  train: [2016-01-01, 2016-06-30]\n")  # unquoted YAML dates
    assert load_config(path).data.train == ("2016-01-01", "2016-06-30")
    refused(path, 'data:\n  valid: ["2016-01-01", "2016-13-01"]\n',  # an impossible date: the key and file
            r"typed.yaml.data.valid\[1\] is '2016-13-01', which is not a date")
    path.write_text("forecast:\n  lookback: 30\n  pred_len: 5\n")  # the windows, one home: a ForecastSpec
    assert load_config(path).forecast == ForecastSpec(lookback=30, pred_len=5)
    refused(path, "forecast:\n  lookback: 1\n", r"typed.yaml.forecast: lookback must be an integer >= 2, got 1")


def test_model_config_errors_name_the_section(tmp_path, data_cache):
    bad_key = tiny_config(tmp_path, data_cache, tokenizer_config={**TINY_TOKENIZER, "d_modle": 8})
    with pytest.raises(ConfigError, match=r"tokenizer_config has unknown key\(s\) \['d_modle'\]"):
        SequentialTrainer(config_from_dict(bad_key)).run()
    bad_heads = tiny_config(tmp_path, data_cache, tokenizer_config={**TINY_TOKENIZER, "n_heads": 3})
    with pytest.raises(ConfigError, match=r"d_model \(32\) must be divisible by n_heads \(3\)"):
        SequentialTrainer(config_from_dict(bad_heads)).run()


def test_pretrained_with_config_overrides(trained, data_cache, tmp_path):
    """A pre-trained source with *_config: the config's values override the checkpoint's (e.g. dropout)."""
    from kronos_qlib.training.sequential import load_or_build

    model = load_or_build(Kronos, str(trained[1]["predictor"]), {**TINY_PREDICTOR, "ffn_dropout_p": 0.3},
                          "predictor", None, 0)
    assert model.transformer[0].ffn.ffn_dropout.p == 0.3


def test_unknown_preset(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        config_from_dict({"preset": "huge"})


def test_presets_build_models():
    for name in ("mini", "small", "cpu"):
        config = config_from_dict({"preset": name})
        tokenizer, predictor = KronosTokenizer(**config.tokenizer_config), Kronos(**config.predictor_config)
        assert tokenizer.s1_bits == predictor.s1_bits
    assert config_from_dict({"preset": "small"}).pre_trained_predictor == "NeoQuasar/Kronos-small"
    user = config_from_dict({"preset": "cpu", "predictor_training": {"epochs": 1}})
    assert user.predictor_training.epochs == 1 and user.predictor_training.max_train_windows == 16384


def test_cli_reports_config_errors_cleanly(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("preset: cpu\nfoo: 1\n")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "train_sequential.py"), "--config", str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "error: unknown key 'foo'" in result.stderr and "Traceback" not in result.stderr


def test_predictor_stage_needs_a_tokenizer(tmp_path, data_cache):
    config = config_from_dict(tiny_config(tmp_path, data_cache, train_tokenizer=False))
    with pytest.raises(ConfigError, match="the predictor stage needs a tokenizer"):
        SequentialTrainer(config).run()


def test_stage_folder_states_and_damaged_files(tmp_path):
    from kronos_qlib.training.stage_folder import Plan, StageFolder

    folder, settings = StageFolder(tmp_path / "predictor", "predictor"), {"lr": 1e-3}
    assert folder.plan(settings, None, folder.in_progress(), skip_existing=True, resume=False) is Plan.FRESH
    folder.path.mkdir()
    folder.metrics.write_text("")
    assert not folder.in_progress(), "killed in its first epoch: nothing to continue, nothing to refuse"
    folder.done.write_text("{not json")
    with pytest.raises(ConfigError, match=r"done.json is damaged .*: move .*predictor away"):
        folder.finished_settings()
    folder.done.write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match=r"marked finished \(done.json\) but .*best holds no checkpoint"):
        folder.plan(settings, folder.finished_settings(), False, skip_existing=True, resume=True)
    folder.best.mkdir()
    (folder.best / "model.safetensors").write_bytes(b"weights")
    assert folder.plan(settings, settings, False, skip_existing=True, resume=True) is Plan.SKIP
    assert folder.plan(settings, settings, False, skip_existing=False, resume=False) is Plan.FRESH
    folder.start_fresh()
    assert folder.path.is_dir() and not any(folder.path.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["predictor"], "the old files are gone, nothing left beside"
