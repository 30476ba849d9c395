"""Get a Qlib daily data folder from a URL or a local archive, checked, and put in place atomically.

The default is the community-maintained CN dataset that Qlib's README points to (Qlib's own
``qlib.run.get_data`` serves an older dataset and has at times been disabled). Everything happens in a
temporary folder beside the target, which only a checked folder leaves, by rename: a download or unpack that
breaks off leaves no half folder at the target.
"""
from __future__ import annotations

import http.client
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ConfigError
from ..logs import progress_bar
from .check import QLIB_LAYOUT, DataReport, check_data

DEFAULT_SOURCE = "https://github.com/chenditc/investment_data/releases/latest/download/qlib_bin.tar.gz"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
CHUNK = 1 << 20


def get_data(target: str | Path, source: str = DEFAULT_SOURCE, *, force: bool = False, market: str = "csi300",
             benchmark: str = "SH000300") -> DataReport:
    """Fetch ``source`` (a URL or a local .tar.gz/.tgz/.zip), unpack and check it, then rename it to ``target``.

    An existing ``target`` is kept unless ``force``; the data must pass :func:`check_data` for ``market`` and
    ``benchmark``, whose report is returned. All work happens in a hidden ``.<target name>.*`` folder beside
    ``target``, removed on any error; only a process killed outright (SIGKILL) leaves it behind, and with
    ``force`` a kill between the two renames leaves the old data in its ``old/`` subfolder.
    """
    target = Path(target).expanduser().absolute()
    if target.exists() and not force:
        raise ConfigError(f"'{target}' already exists: pass --force to replace it")
    suffix = next((s for s in ARCHIVE_SUFFIXES if urlparse(source).path.endswith(s)), None)
    if suffix is None:
        raise ConfigError(f"source '{source}' is not an archive: it must end in {', '.join(ARCHIVE_SUFFIXES)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        work = Path(tmp)
        archive = Path(source).expanduser()
        if urlparse(source).scheme in ("http", "https", "ftp", "file"):
            archive = download(source, work / f"archive{suffix}")
        elif not archive.is_file():
            raise ConfigError(f"archive '{source}' does not exist")
        root = find_layout(unpack(archive, work / "unpacked"), source)
        report = check_data(root, market, benchmark=benchmark)
        report.provider = target
        if not report.ok:
            raise ConfigError(f"the data from {source} fails the check:\n{report}")
        replace_folder(root, target, work / "old")
    return report


def download(url: str, path: Path) -> Path:
    """``url`` saved to ``path`` with a progress bar; a clear error naming the URL if it cannot be had whole."""
    name = Path(urlparse(url).path).name
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
            size = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(total=size, unit="B", unit_scale=True, desc=f"downloading {name}") as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise ConfigError(f"cannot download {url}: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise ConfigError(f"cannot reach {url}: {err.reason}") from err
    except (http.client.HTTPException, OSError) as err:
        raise ConfigError(f"the download of {url} broke off: {err!r}") from err
    if size is not None and path.stat().st_size != size:
        raise ConfigError(f"the download of {url} broke off: {path.stat().st_size} of {size} bytes")
    return path


def unpack(archive: Path, folder: Path) -> Path:
    """``archive`` unpacked into ``folder``; members that would land outside it are refused (tar's "data"
    filter) or kept inside (zipfile drops absolute paths and "..")."""
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(folder)
        else:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(folder, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise ConfigError(f"the archive {archive} is truncated or damaged: {err}") from err
    return folder


def find_layout(folder: Path, source: str) -> Path:
    """The Qlib data folder (calendars/, instruments/, features/) in ``folder`` or its single top folder."""
    entries = sorted(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        folder, entries = entries[0], sorted(entries[0].iterdir())
    missing = [f"{name}/" for name in QLIB_LAYOUT if not (folder / name).is_dir()]
    if missing:
        found = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:10]) or "nothing"
        raise ConfigError(f"{source} holds no Qlib data folder: {', '.join(missing)} missing (found: {found})")
    return folder


def replace_folder(folder: Path, target: Path, old: Path) -> None:
    """Rename ``folder`` to ``target``; an existing ``target`` is first renamed to ``old`` and put back if the
    second rename fails, so ``target`` is always either the old folder or the new one (or briefly neither)."""
    if target.exists():
        target.rename(old)
    try:
        folder.rename(target)
    except OSError:
        if old.exists():
            old.rename(target)
        raise
