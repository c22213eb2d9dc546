"""Tests for data.download against a local HTTP server (no real network)."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import logging
import os
import re
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from twostage.data import download as dl
from twostage.data.download import (CacheDamagedError, ChecksumError, DataNotFoundError,
                                    resolve_data_dir)

FILES = {
    "u.data": "1\t1\t5\t874965758\n2\t1\t3\t876893171\n",
    "u.item": "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n",
    "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n",
    "u.genre": "unknown|0\n",
}


def _make_zip(files=FILES, top="ml-100k") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/", "")
        for name, text in files.items():
            zf.writestr(f"{top}/{name}", text)
        zf.writestr("__MACOSX/._u.data", "junk")
    return buf.getvalue()


ZIP = _make_zip()
ZIP_SHA = hashlib.sha256(ZIP).hexdigest()
GARBAGE = b"this is not a zip file at all " * 50
GARBAGE_SHA = hashlib.sha256(GARBAGE).hexdigest()
NO_DIR_ZIP = _make_zip(top="other")


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        type(self).hits.append(self.path)
        if self.path == "/ml-100k.zip":
            self._send(ZIP)
        elif self.path == "/garbage.zip":
            self._send(GARBAGE)
        elif self.path == "/nodir.zip":
            self._send(NO_DIR_ZIP)
        elif self.path == "/truncated.zip":
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(ZIP)))
            self.end_headers()
            self.wfile.write(ZIP[: len(ZIP) // 2])
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404, "Not Found")

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    """Yield (base_url, stop); stop() shuts the server down (idempotent)."""
    _Handler.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    stopped = []

    def stop():
        if not stopped:
            stopped.append(True)
            httpd.shutdown()
            httpd.server_close()
            thread.join(5)

    yield f"http://127.0.0.1:{httpd.server_address[1]}", stop
    stop()


@pytest.fixture
def refused_url():
    """A URL whose port is bound but not listening: connecting is refused at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/ml-100k.zip"
    sock.close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("TWOSTAGE_DATA_DIR", raising=False)
    monkeypatch.delenv("TWOSTAGE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _write_raw(directory: Path, names=("u.data", "u.item", "u.user")) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text(FILES[name])
    return directory


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def _get(base, cache, path="/ml-100k.zip", sha=ZIP_SHA, size=len(ZIP), **kw):
    kw.setdefault("progress", False)
    kw.setdefault("timeout", 5.0)
    return resolve_data_dir(cache_dir=cache, url=base + path, sha256=sha, size=size, **kw)


# ------------------------------------------------------------------------------ download path


def test_download_unpacks_then_uses_cache_without_network(server, tmp_path, refused_url):
    base, stop = server
    cache = tmp_path / "cache"
    got = _get(base, cache, progress=True)  # exercise the tqdm bar too
    assert got == (cache / "ml-100k").resolve()
    for name in ("u.data", "u.item", "u.user", "u.genre"):
        assert (got / name).read_text() == FILES[name]
    assert _leftovers(cache) == ["ml-100k"]  # no temp zip/dir, no __MACOSX
    assert _Handler.hits == ["/ml-100k.zip"]

    stop()
    again = resolve_data_dir(cache_dir=cache, url=refused_url, sha256=ZIP_SHA, size=len(ZIP),
                             progress=False)
    assert again == got
    assert resolve_data_dir(cache_dir=cache, download=False) == got
    assert _Handler.hits == ["/ml-100k.zip"]


def test_size_none_and_sha_none_skip_checks(server, tmp_path):
    base, _ = server
    got = _get(base, tmp_path / "c", sha=None, size=None)
    assert (got / "u.data").is_file()


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    base, _ = server
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError) as info:
        _get(base, cache, sha="0" * 64)
    msg = str(info.value)
    assert "0" * 64 in msg and ZIP_SHA in msg and "TWOSTAGE_DATA_DIR" in msg
    assert _leftovers(cache) == []


def test_wrong_size_is_checksum_error(server, tmp_path):
    base, _ = server
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match=f"expected {len(ZIP) + 7} bytes, got {len(ZIP)}"):
        _get(base, cache, size=len(ZIP) + 7)
    assert _leftovers(cache) == []
    with pytest.raises(ChecksumError, match="larger than expected"):
        _get(base, cache, size=10)
    assert _leftovers(cache) == []


def test_truncated_download_leaves_nothing(server, tmp_path):
    base, _ = server
    cache = tmp_path / "cache"
    # Content-Length promises the whole zip, the server sends half and closes.
    with pytest.raises(DataNotFoundError, match="cut off"):
        _get(base, cache, path="/truncated.zip", size=None)
    assert _leftovers(cache) == []
    with pytest.raises(DataNotFoundError):
        _get(base, cache, path="/truncated.zip")
    assert _leftovers(cache) == []


def test_bad_zip_leaves_nothing(server, tmp_path):
    base, _ = server
    cache = tmp_path / "cache"
    with pytest.raises(DataNotFoundError, match="not a valid zip") as info:
        _get(base, cache, path="/garbage.zip", sha=GARBAGE_SHA, size=len(GARBAGE))
    assert not isinstance(info.value, ChecksumError)
    assert _leftovers(cache) == []


def test_zip_without_ml100k_folder_leaves_nothing(server, tmp_path):
    base, _ = server
    cache = tmp_path / "cache"
    with pytest.raises(DataNotFoundError, match="ml-100k/u.data"):
        _get(base, cache, path="/nodir.zip", sha=hashlib.sha256(NO_DIR_ZIP).hexdigest(),
             size=len(NO_DIR_ZIP))
    assert _leftovers(cache) == []


def test_http_404(server, tmp_path):
    base, _ = server
    with pytest.raises(DataNotFoundError, match="HTTP 404"):
        _get(base, tmp_path / "cache", path="/missing.zip")
    assert _leftovers(tmp_path / "cache") == []


def test_connection_refused_says_how_to_use_local_copy(tmp_path, refused_url):
    cache = tmp_path / "cache"
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir(cache_dir=cache, url=refused_url, progress=False, timeout=2)
    msg = str(info.value)
    assert "TWOSTAGE_DATA_DIR" in msg and "--data-dir" in msg and "network" in msg
    assert not isinstance(info.value, ChecksumError)
    assert _leftovers(cache) == []


def test_timeout_is_network_error(tmp_path):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)  # accepts (via the backlog) but never answers
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/ml-100k.zip"
        with pytest.raises(DataNotFoundError, match="TWOSTAGE_DATA_DIR"):
            resolve_data_dir(cache_dir=tmp_path / "c", url=url, progress=False, timeout=0.3)
    finally:
        sock.close()
    assert _leftovers(tmp_path / "c") == []


def test_keyboard_interrupt_during_unpack_leaves_nothing(server, tmp_path, monkeypatch):
    base, _ = server
    cache = tmp_path / "cache"
    real_extract = dl._extract

    def interrupted(zip_path, dest, url, *variant):
        real_extract(zip_path, dest, url, *variant)  # partial dir exists now
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _get(base, cache)
    assert _leftovers(cache) == []


def test_concurrent_winner_is_accepted(server, tmp_path, monkeypatch):
    base, _ = server
    cache = tmp_path / "cache"
    real_extract = dl._extract

    def racing(zip_path, dest, url, *variant):
        real_extract(zip_path, dest, url, *variant)
        _write_raw(cache / "ml-100k")  # another process finished first

    monkeypatch.setattr(dl, "_extract", racing)
    got = _get(base, cache)
    assert got == (cache / "ml-100k").resolve()
    assert not (got / "u.genre").exists()  # the winner's copy was kept
    assert _leftovers(cache) == ["ml-100k"]


def test_stale_incomplete_cache_is_replaced(server, tmp_path):
    base, _ = server
    cache = tmp_path / "cache"
    _write_raw(cache / "ml-100k", names=("u.data",))
    got = _get(base, cache)
    assert (got / "u.user").read_text() == FILES["u.user"]
    assert _leftovers(cache) == ["ml-100k"]


def test_download_disabled(tmp_path):
    with pytest.raises(DataNotFoundError, match="downloading is disabled"):
        resolve_data_dir(cache_dir=tmp_path / "cache", download=False)
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------ local copies


def test_explicit_data_dir_missing_file_is_named(tmp_path, refused_url):
    d = _write_raw(tmp_path / "raw", names=("u.data", "u.item"))
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir(d, cache_dir=tmp_path / "cache", url=refused_url)
    msg = str(info.value)
    assert "u.user" in msg and str(d) in msg and "u.data" not in msg.split("missing")[1][:20]
    assert not (tmp_path / "cache").exists()  # never fell through to cache/download


def test_explicit_data_dir_nonexistent(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope", cache_dir=tmp_path / "cache")


def test_explicit_data_dir_ok_and_nothing_written(tmp_path):
    d = _write_raw(tmp_path / "raw")
    before = sorted(os.listdir(tmp_path))
    assert resolve_data_dir(str(d), cache_dir=tmp_path / "cache") == d.resolve()
    assert sorted(os.listdir(tmp_path)) == before
    assert sorted(os.listdir(d)) == ["u.data", "u.item", "u.user"]


def test_parent_of_ml100k_accepted(tmp_path):
    d = _write_raw(tmp_path / "datasets" / "ml-100k")
    assert resolve_data_dir(tmp_path / "datasets") == d.resolve()


def test_parent_with_incomplete_ml100k_names_missing(tmp_path):
    _write_raw(tmp_path / "datasets" / "ml-100k", names=("u.data", "u.user"))
    with pytest.raises(DataNotFoundError, match="u.item"):
        resolve_data_dir(tmp_path / "datasets")


def test_env_data_dir_honoured(tmp_path, monkeypatch, refused_url):
    d = _write_raw(tmp_path / "envdata")
    monkeypatch.setenv("TWOSTAGE_DATA_DIR", str(d))
    assert resolve_data_dir(cache_dir=tmp_path / "cache", url=refused_url) == d.resolve()
    other = _write_raw(tmp_path / "flag")
    assert resolve_data_dir(other) == other.resolve()  # the flag wins over the env


def test_env_data_dir_missing_files_raises(tmp_path, monkeypatch, refused_url):
    d = tmp_path / "empty"
    d.mkdir()
    monkeypatch.setenv("TWOSTAGE_DATA_DIR", str(d))
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir(cache_dir=tmp_path / "cache", url=refused_url)
    msg = str(info.value)
    assert "TWOSTAGE_DATA_DIR" in msg and str(d) in msg and "u.data" in msg
    assert "--data-dir" in msg  # the how-to hint is there even when the env var is named


def test_cache_env_honoured(tmp_path, monkeypatch, server):
    base, _ = server
    cache = tmp_path / "envcache"
    monkeypatch.setenv("TWOSTAGE_CACHE", str(cache))
    assert dl.default_cache_dir() == cache
    got = resolve_data_dir(url=base + "/ml-100k.zip", sha256=ZIP_SHA, size=len(ZIP),
                           progress=False)
    assert got == (cache / "ml-100k").resolve()


def test_default_cache_dir_under_home(tmp_path):
    assert dl.default_cache_dir() == tmp_path / "home" / ".cache" / "twostage"


def test_unwritable_cache_is_clear_error(tmp_path, refused_url):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataNotFoundError, match="TWOSTAGE_CACHE"):
        resolve_data_dir(cache_dir=blocker / "cache", url=refused_url)


def test_every_error_mentions_local_copy():
    assert "TWOSTAGE_DATA_DIR" in str(DataNotFoundError("boom"))
    assert "--data-dir" in str(ChecksumError("bad"))
    assert issubclass(ChecksumError, DataNotFoundError)
    assert issubclass(DataNotFoundError, RuntimeError)


# ------------------------------------------------------------------------------ cache checksums


def _manifest(folder: Path) -> dict:
    return json.loads((folder / dl.MANIFEST).read_text())["files"]


def _cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def test_download_writes_checksum_manifest(server, tmp_path):
    base, _ = server
    cache = tmp_path / "cache"
    got = _get(base, cache)
    files = _manifest(got)
    assert sorted(files) == ["u.data", "u.genre", "u.item", "u.user"]  # every unpacked file
    for name, entry in files.items():
        raw = (got / name).read_bytes()
        assert entry == {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    assert sorted(os.listdir(got)) == sorted([dl.MANIFEST, *FILES])  # no temp file left
    assert _leftovers(cache) == ["ml-100k"]


@pytest.fixture
def cached(server, tmp_path):
    """(cache, folder): a cache holding a verified download."""
    base, _ = server
    cache = tmp_path / "cache"
    return cache, _get(base, cache)


def test_truncated_cached_file_is_an_error_when_download_is_disabled(cached):
    """The report: a cached u.data cut short trained on what was left, with exit 0."""
    cache, folder = cached
    _cut(folder / "u.data", 20)
    size = len(FILES["u.data"])
    with pytest.raises(CacheDamagedError, match=(
            rf"the cached copy {re.escape(str(cache / 'ml-100k'))} is damaged: u.data has 20 "
            rf"bytes, expected {size}\. Delete .*ml-100k and run again with downloading enabled")):
        resolve_data_dir(cache_dir=cache, download=False)
    assert (folder / "u.data").read_bytes() == FILES["u.data"].encode()[:20]  # left as it was


def test_changed_content_same_size_is_found_by_sha256(cached):
    cache, folder = cached
    (folder / "u.user").write_text(FILES["u.user"].replace("technician", "technicia1"))
    with pytest.raises(CacheDamagedError, match=r"u.user has SHA-256 [0-9a-f]{64}, expected "
                                                r"[0-9a-f]{64} \(same size, changed content\)"):
        resolve_data_dir(cache_dir=cache, download=False)


def test_listed_extra_file_missing_is_damage(cached):
    cache, folder = cached
    (folder / "u.genre").unlink()
    with pytest.raises(CacheDamagedError, match=r"u.genre is missing \(expected a file of \d+ "
                                                r"bytes\)"):
        resolve_data_dir(cache_dir=cache, download=False)


@pytest.mark.parametrize("text", ["{not json", '{"files": {"../u.data": {"size": 1, "sha256": '
                                                '"x"}}}', "[]"])
def test_corrupt_manifest_is_damage(cached, text):
    cache, folder = cached
    (folder / dl.MANIFEST).write_text(text)
    with pytest.raises(CacheDamagedError, match=f"its checksum manifest {re.escape(dl.MANIFEST)} "
                                                "is unreadable or corrupt"):
        resolve_data_dir(cache_dir=cache, download=False)


def test_damaged_cache_is_replaced_by_a_fresh_download(cached, server, caplog):
    base, _ = server
    cache, folder = cached
    _cut(folder / "u.data", 20)
    with caplog.at_level(logging.WARNING, logger=dl.__name__):
        got = _get(base, cache)
    assert got == folder
    assert (got / "u.data").read_text() == FILES["u.data"]
    assert _Handler.hits == ["/ml-100k.zip", "/ml-100k.zip"]
    assert f"the cached copy {cache / 'ml-100k'} is damaged: u.data has 20 bytes" in caplog.text
    assert "deleting it and downloading a fresh copy" in caplog.text
    assert _leftovers(cache) == ["ml-100k"]  # the damaged copy is gone, no temp folder left
    assert resolve_data_dir(cache_dir=cache, download=False) == got  # and it verifies


def test_damaged_cache_and_no_network(cached, server, caplog):
    """The damaged copy is gone either way; the error is the download's."""
    cache, folder = cached
    _cut(folder / "u.data", 20)
    base, stop = server
    stop()
    with caplog.at_level(logging.WARNING, logger=dl.__name__):
        with pytest.raises(DataNotFoundError, match="could not download"):
            _get(base, cache, timeout=2)
    assert "is damaged: u.data has 20 bytes" in caplog.text
    assert _leftovers(cache) == []


def test_cache_without_manifest_is_used_with_one_warning(tmp_path, caplog, refused_url):
    """A copy unpacked by an older version has nothing to check against: used, warned once."""
    cache = tmp_path / "cache"
    folder = _write_raw(cache / "ml-100k")
    with caplog.at_level(logging.WARNING, logger=dl.__name__):
        assert resolve_data_dir(cache_dir=cache, url=refused_url) == folder.resolve()
        assert resolve_data_dir(cache_dir=cache, download=False) == folder.resolve()
    warnings = [r for r in caplog.records if dl.MANIFEST in r.getMessage()]
    assert len(warnings) == 1
    assert "cannot be checked for damage" in warnings[0].getMessage()
    assert sorted(os.listdir(folder)) == ["u.data", "u.item", "u.user"]  # nothing written


def test_user_named_folder_is_neither_verified_nor_written(tmp_path, monkeypatch):
    """A --data-dir / TWOSTAGE_DATA_DIR folder is the user's: no manifest check, no writes."""
    d = _write_raw(tmp_path / "raw")
    (d / dl.MANIFEST).write_text(json.dumps({"files": {"u.data": {"size": 1, "sha256": "0" * 64}}}))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in d.iterdir()}
    assert resolve_data_dir(d, cache_dir=tmp_path / "cache") == d.resolve()
    monkeypatch.setenv("TWOSTAGE_DATA_DIR", str(d))
    assert resolve_data_dir(cache_dir=tmp_path / "cache") == d.resolve()
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in d.iterdir()} == before


# ------------------------------------------------------------------------------ not-a-file names


def _replace_with(folder: Path, name: str, kind: str, tmp_path: Path) -> None:
    (folder / name).unlink()
    if kind == "directory":
        (folder / name).mkdir()
    elif kind == "loop":
        os.symlink(name, folder / name)
    else:
        os.symlink(tmp_path / "gone", folder / name)


@pytest.mark.parametrize("kind, says", [
    ("directory", "has a u.data that is a directory, not a file"),
    ("loop", "has a u.data that is a symbolic link loop"),
    ("dangling", "has a u.data that is a dangling symbolic link (to '{gone}', which does not exist)"),
])
def test_required_file_that_is_not_a_file_is_named(tmp_path, kind, says):
    d = _write_raw(tmp_path / "raw")
    _replace_with(d, "u.data", kind, tmp_path)
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir(d, cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert f"points at {d}, which {says.format(gone=tmp_path / 'gone')} (and has no ml-100k/" in msg
    assert "missing" not in msg.split("(and has no")[0]


def test_not_a_file_in_ml100k_subfolder_is_named(tmp_path):
    sub = _write_raw(tmp_path / "datasets" / "ml-100k")
    _replace_with(sub, "u.item", "directory", tmp_path)
    (sub / "u.user").unlink()
    with pytest.raises(DataNotFoundError, match=re.escape(
            f"{sub} is missing u.user; has a u.item that is a directory, not a file.")):
        resolve_data_dir(tmp_path / "datasets")


def test_file_problem():
    assert dl.file_problem(Path(__file__)) is None
    assert dl.file_problem(Path(__file__).parent) == "a directory, not a file"
    assert dl.file_problem(Path(__file__).parent / "no-such-file") == "missing"


def test_damaged_cache_that_cannot_be_moved_aside(cached, server, monkeypatch):
    base, _ = server
    cache, folder = cached
    _cut(folder / "u.data", 20)
    real_replace = os.replace

    def refuse(src, dst):
        if Path(src) == cache / "ml-100k":
            raise PermissionError(13, "Permission denied")
        return real_replace(src, dst)

    monkeypatch.setattr(dl.os, "replace", refuse)
    with pytest.raises(CacheDamagedError, match=r"is damaged: u.data has 20 bytes, expected \d+, "
                                                r"and it cannot be moved aside \(.*Permission "
                                                r"denied\)\. Delete .* and run again"):
        _get(base, cache)
    assert _leftovers(cache) == ["ml-100k"]  # no trash folder left behind


def test_leftovers_of_killed_downloads_are_cleaned(tmp_path, monkeypatch, caplog):
    """A download killed mid-way leaves .ml-100k-<pid>-*.zip.part / unpack folders; the next
    resolve removes those of dead processes (never those of a live one) and says so."""
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f".ml-100k-{dead.pid}-abc.zip.part").write_bytes(b"partial")
    (cache / f".ml-100k-{dead.pid}-def.tmp").mkdir()
    live = cache / f".ml-100k-{os.getpid()}-ghi.zip.part"
    live.write_bytes(b"in progress")
    monkeypatch.delenv("TWOSTAGE_DATA_DIR", raising=False)
    with pytest.raises(dl.DataNotFoundError):
        dl.resolve_data_dir(cache_dir=cache, download=False)
    assert sorted(p.name for p in cache.iterdir()) == [live.name]
    assert "interrupted download" in caplog.text
