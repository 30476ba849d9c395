"""Loading and saving in the Hugging Face Hub layout (``config.json`` + ``model.safetensors``).

Built on ``huggingface_hub.PyTorchModelHubMixin`` (which also provides ``push_to_hub`` and the model card), with
two changes that matter for research code: loading is strict and says exactly what is wrong with a folder, file
or repository, and saving replaces each file atomically so a crash never leaves a half-written one. A loaded
network's ``origin`` names the weights it holds (source, Hub commit, sha256 of the file) for the run's records.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import tempfile
import typing
from pathlib import Path
from typing import Any, TypeVar

import torch
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError
from .configs import RELEASED_FILES, hub_revision, released_name

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound="HubModelMixin")


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def _resolve_files(source: str, revision: str | None = None, **hub_kwargs: Any) -> tuple[Path, Path]:
    """Paths of (config.json, model.safetensors) in a local folder or a Hub repository's cached snapshot (at
    ``revision``, see :func:`~kronos_qlib.model.configs.hub_revision`; a local folder has none)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        files = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"checkpoint folder '{folder}' has no {file.name}")
        return files
    if _looks_like_path(source):
        raise CheckpointError(f"checkpoint folder '{source}' does not exist")
    revision = hub_revision(source, revision)
    try:
        return tuple(Path(hf_hub_download(repo_id=source, filename=name, revision=revision, **hub_kwargs))
                     for name in (CONFIG_NAME, WEIGHTS_NAME))
    except Exception as err:  # the Hub client raises many types (HTTP, offline, validation, not found)
        raise CheckpointError(
            f"could not load '{source}': it is not a local folder, and the Hugging Face Hub did not provide it "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'})"
        ) from err


def init_arg_mismatch(cls: type, config: dict) -> tuple[list[str], list[str]]:
    """(missing, unknown) keys of ``config`` as the constructor arguments of ``cls``."""
    expected = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    return [k for k in expected if k not in config], [k for k in config if k not in expected]


def _read_config(path: Path, cls: type) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object of {cls.__name__} arguments")
    missing, unknown = init_arg_mismatch(cls, config)
    if missing or unknown:
        raise CheckpointError(f"{path} does not describe a {cls.__name__}: missing keys {missing}, "
                              f"unknown keys {unknown}")
    check_arg_types(cls, config, str(path))
    return config


#: JSON values each annotated constructor type accepts (a JSON integer is a valid float, a bool is no number)
_JSON_TYPES = {int: (int,), float: (int, float), bool: (bool,)}


def check_arg_types(cls: type, config: dict, where: str) -> None:
    """Each value of ``config`` must fit the type of ``cls``'s constructor argument: ``"d_model": "64"`` would
    otherwise fail deep inside torch."""
    hints = typing.get_type_hints(cls.__init__)
    for key, value in config.items():
        accepted = _JSON_TYPES.get(hints.get(key))
        if accepted and (not isinstance(value, accepted) or bool not in accepted and isinstance(value, bool)):
            raise CheckpointError(f"{where}: {key} must be {hints[key].__name__}, got {value!r} "
                                  f"({type(value).__name__})")


#: The first bytes of a Git LFS pointer: what a clone without git-lfs holds in place of each weights file.
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def check_not_lfs_pointer(path: Path) -> None:
    """A weights file that is a Git LFS pointer (a clone made without git-lfs) is refused with what to do, rather
    than safetensors' "header too large"."""
    with open(path, "rb") as handle:
        if handle.read(len(LFS_POINTER)) == LFS_POINTER:
            raise CheckpointError(
                f"{path} is a Git LFS pointer ({path.stat().st_size} bytes), not the weights: the folder was cloned "
                f"without git-lfs. Run `git lfs install && git lfs pull` in {path.parent}, or pass the Hub id (e.g. "
                "NeoQuasar/Kronos-small) to from_pretrained to download the real file")


@functools.lru_cache(maxsize=None)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed, computed once per (path, size, modification time) in a process."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def check_released_file(source: str, weights_file: Path) -> str | None:
    """For a released checkpoint (by Hub id or a local copy), log whether its weights file is the released one;
    another file is a warning naming both hashes (a finetune of your own is fine, a silently changed download is
    not). Returns the file's sha256 (None for a checkpoint that is not a released one)."""
    name = released_name(source)
    if name is None:
        return None
    digest = file_sha256(weights_file)
    expected = RELEASED_FILES[name][2]
    if digest == expected:
        logger.info("%s: %s is the released %s file (sha256 %s)", source, weights_file.name, name, digest)
    else:
        logger.warning("%s has the configuration of %s but its %s is not the released file: sha256 %s, released "
                       "%s", source, name, weights_file.name, digest, expected)
    return digest


def hub_commit(path: Path) -> str | None:
    """The Hub commit of a file in the Hub cache (``.../snapshots/<commit>/<file>``), None elsewhere: the cache
    names each snapshot by the commit it was downloaded at, whatever branch or tag was asked for."""
    return path.parent.name if path.parent.parent.name == "snapshots" else None


def origin(source: str, weights_file: Path) -> dict[str, str | None]:
    """What a network loaded from ``source`` started from, for done.json and the recorder: the source, its Hub
    commit (None for a local folder) and the sha256 of its weights file."""
    return {"source": source, "revision": hub_commit(weights_file), "sha256": file_sha256(weights_file)}


def random_origin(seed: int) -> dict[str, str | int]:
    """The ``origin`` of a network that starts from random weights: the seed that drew them."""
    return {"source": "random", "seed": seed}


def _load_weights(model: torch.nn.Module, path: Path) -> None:
    check_not_lfs_pointer(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
                  for key in expected if key in state and state[key].shape != expected[key].shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(f"{path} does not match {type(model).__name__}'s configuration: "
                              f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                              f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
                              f"shape mismatches {mismatched[:5]}")
    damaged = [key for key, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if damaged:  # NaN weights give plausible-looking paths: the sampler would draw from NaN distributions
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf) in {', '.join(damaged[:5])}"
                              f"{'...' if len(damaged) > 5 else ''}")
    model.load_state_dict(state, strict=True)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-1 of every tensor of the state dict: identifies a model's weights wherever they came from."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class HubModelMixin(PyTorchModelHubMixin):
    """``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` for the Kronos networks, through the mixin's
    ``_from_pretrained`` and ``_save_pretrained`` hooks.

    ``from_pretrained`` only checks the source before handing it to the mixin: the mixin reads ``config.json``
    before its hook runs, and leniently (a missing config is a log line, a malformed one a bare JSONDecodeError, a
    missing folder a Hub id validation error), where research code needs a refusal that names the problem.
    """

    #: what the weights were loaded from (:func:`origin`); a network built in code has none
    origin: dict | None = None

    @classmethod
    def from_pretrained(cls: type[M], pretrained_model_name_or_path: str | Path, *, revision: str | None = None,
                        cache_dir: str | Path | None = None, force_download: bool = False,
                        local_files_only: bool = False, token: str | bool | None = None,
                        map_location: str | torch.device = "cpu", **config_overrides: Any) -> M:
        """Load from a local folder or a Hub id (e.g. ``NeoQuasar/Kronos-small``), in eval mode.

        ``config_overrides`` replace values of ``config.json`` (e.g. dropout rates for finetuning).
        """
        source = str(pretrained_model_name_or_path)
        if Path(source).expanduser().is_dir():  # the mixin neither expands ~ nor ignores a folder's revision
            source, revision = str(Path(source).expanduser()), None
        else:
            revision = hub_revision(source, revision)
        hub = dict(cache_dir=cache_dir, force_download=force_download, local_files_only=local_files_only, token=token)
        config_file, _ = _resolve_files(source, revision=revision, **hub)
        _read_config(config_file, cls)
        unknown = init_arg_mismatch(cls, config_overrides)[1]
        if unknown:
            raise CheckpointError(f"unknown {cls.__name__} argument(s) {unknown} to override '{source}'")
        check_arg_types(cls, config_overrides, f"override of '{source}'")
        return super().from_pretrained(source, revision=revision, map_location=map_location, **hub,
                                       **config_overrides)

    @classmethod
    def _from_pretrained(cls: type[M], *, model_id: str, revision: str | None, map_location: str | torch.device = "cpu",
                         **kwargs: Any) -> M:
        """The mixin's hook: ``kwargs`` are the Hub arguments and the constructor's (config.json, overridden). The
        weights load strictly: a partial load would sample from random weights."""
        hub = {key: kwargs.pop(key) for key in ("cache_dir", "force_download", "local_files_only", "token")}
        _, weights_file = _resolve_files(model_id, revision=revision, **hub)
        model = cls(**kwargs)
        _load_weights(model, weights_file)
        check_released_file(model_id, weights_file)
        model.origin = origin(model_id, weights_file)
        return model.to(map_location).eval()

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: its ``model.safetensors``, then ``config.json`` (the constructor's arguments, as the
        mixin writes them), each renamed into place. The mixin has removed the old ``config.json`` first, so a crash
        in between leaves a folder that loading refuses ("has no config.json"), never weights beside another
        config."""
        with tempfile.TemporaryDirectory(dir=save_directory, prefix=".saving-") as tmp:
            super()._save_pretrained(Path(tmp))
            (Path(tmp) / CONFIG_NAME).write_text(json.dumps(self._hub_mixin_config, sort_keys=True, indent=2))
            for name in (WEIGHTS_NAME, CONFIG_NAME):
                os.replace(Path(tmp) / name, save_directory / name)
