"""Getting data: archives built here from a small copy of the real folder (no network), unpacked atomically."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from conftest import REPO
from kronos_qlib.data.download import get_data
from kronos_qlib.errors import ConfigError
from conftest import small_provider


def archive_of(folder: Path, path: Path) -> Path:
    """``folder`` packed as the community release is: every member under one top folder, qlib_bin/."""
    with tarfile.open(path, "w:gz", dereference=True) as tar:
        tar.add(folder, arcname="qlib_bin")
    return path


@pytest.fixture()
def archive(tmp_path) -> Path:
    return archive_of(small_provider(tmp_path / "provider"), tmp_path / "qlib_bin.tar.gz")


def leftovers(parent: Path) -> list[str]:
    """Hidden temporary folders that a fetch left beside its target."""
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_archive_from_a_url_becomes_a_checked_folder(archive, tmp_path):
    target = tmp_path / "data" / "cn_data"
    report = get_data(target, archive.as_uri())
    assert_checked_folder(report, target)


def test_local_zip_without_a_top_folder(tmp_path):
    folder = small_provider(tmp_path / "provider")
    archive = shutil.make_archive(str(tmp_path / "qlib_data"), "zip", root_dir=folder)
    target = tmp_path / "data" / "cn_data"
    assert_checked_folder(get_data(target, archive), target)


def assert_checked_folder(report, target: Path) -> None:
    assert report.ok and report.provider == target
    assert sorted(p.name for p in target.iterdir()) == ["calendars", "features", "instruments"]
    assert (target / "features" / "sh000300" / "close.day.bin").is_file()
    assert leftovers(target.parent) == []


def test_truncated_archive_leaves_no_folder(archive, tmp_path):
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    target = tmp_path / "data" / "cn_data"
    with pytest.raises(ConfigError, match=r"the archive .*cut\.tar\.gz is truncated or damaged"):
        get_data(target, str(truncated))
    assert not target.exists() and leftovers(target.parent) == []


def test_archive_without_the_qlib_layout(tmp_path):
    folder = small_provider(tmp_path / "provider")
    for path in sorted((folder / "features").rglob("*"), reverse=True):
        path.unlink() if path.is_symlink() else path.rmdir()
    (folder / "features").rmdir()
    (folder / "README.txt").write_text("no features here\n")
    target = tmp_path / "cn_data"
    with pytest.raises(ConfigError, match=r"holds no Qlib data folder: features/ missing "
                                          r"\(found: README.txt, calendars/, instruments/\)"):
        get_data(target, str(archive_of(folder, tmp_path / "wrong.tgz")))
    assert not target.exists() and leftovers(tmp_path) == []


def test_data_failing_the_check_is_not_put_in_place(tmp_path):
    folder = small_provider(tmp_path / "provider")
    (folder / "instruments" / "csi300.txt").unlink()
    target = tmp_path / "cn_data"
    with pytest.raises(ConfigError, match="(?s)fails the check:.*market 'csi300' has no instruments file "
                                          "instruments/csi300.txt"):
        get_data(target, str(archive_of(folder, tmp_path / "no_market.tar.gz")))
    assert not target.exists() and leftovers(tmp_path) == []


def test_existing_target_needs_force(archive, tmp_path):
    target = tmp_path / "cn_data"
    (target / "calendars").mkdir(parents=True)
    result = subprocess.run([sys.executable, "scripts/get_data.py", "--target", str(target), "--source",
                             str(archive)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 1
    assert f"error: '{target}' already exists: pass --force to replace it" in result.stderr
    assert sorted(p.name for p in target.iterdir()) == ["calendars"]
    assert get_data(target, str(archive), force=True).ok
    assert sorted(p.name for p in target.iterdir()) == ["calendars", "features", "instruments"]
    assert leftovers(tmp_path) == []


def test_unreachable_url_and_unknown_archive(tmp_path):
    url = "http://127.0.0.1:9/qlib_bin.tar.gz"
    with pytest.raises(ConfigError, match=f"cannot reach {url}: .*refused"):
        get_data(tmp_path / "cn_data", url)
    with pytest.raises(ConfigError, match="source 'data.rar' is not an archive: it must end in .tar.gz, .tgz, .zip"):
        get_data(tmp_path / "cn_data", "data.rar")
    with pytest.raises(ConfigError, match="archive 'missing.zip' does not exist"):
        get_data(tmp_path / "cn_data", "missing.zip")
    assert list(tmp_path.iterdir()) == []


class HalfArchive(BaseHTTPRequestHandler):
    """Promises 1000 bytes of archive and closes the connection after 10."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + bytes(8))

    def log_message(self, *args):
        pass


def test_download_that_breaks_off_leaves_no_folder(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), HalfArchive)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/qlib_bin.tar.gz"
    try:
        with pytest.raises(ConfigError, match=f"the download of {url} broke off"):
            get_data(tmp_path / "cn_data", url)
    finally:
        thread.join(timeout=10)
        server.server_close()
    assert list(tmp_path.iterdir()) == []
