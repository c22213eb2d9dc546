"""data.registry against the installed tensorflow_datasets, and data.download for every release:
download, checksum, atomic unpack and cache per variant, folders of the wrong release, archives
whose entries would unpack outside the cache (all against a local HTTP server, no network)."""
from __future__ import annotations

import hashlib
import http.server
import importlib.util
import io
import os
import re
import stat
import threading
import zipfile
from pathlib import Path

import pytest

from twostage.config import DATASETS
from twostage.data import download as dl
from twostage.data.download import ChecksumError, DataNotFoundError, resolve_data_dir
from twostage.data.registry import LAYOUTS, RELEASES, VARIANTS, layout_of_files, variant


def _tfds_file(*parts: str) -> Path:
    """A file of the installed tensorflow_datasets package, found without importing it."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    assert spec is not None and spec.submodule_search_locations
    return Path(list(spec.submodule_search_locations)[0], *parts)


# --------------------------------------------------------------------------- the registry


def test_registry_matches_tfds_url_checksums():
    """URL, size and SHA-256 of every variant as tensorflow_datasets lists them."""
    listed = {}
    for line in _tfds_file("url_checksums", "movielens.txt").read_text().splitlines():
        if line.strip():
            url, size, sha, _ = line.split("\t")
            listed[url] = (int(size), sha)
    assert set(listed) == {v.url for v in VARIANTS.values()}
    for v in VARIANTS.values():
        assert listed[v.url] == (v.size, v.sha256), v.name


def test_registry_matches_tfds_builder_configs():
    """Names, URLs and unpacked folders ('ml-%s' % format_version) of TFDS' builder configs,
    read from its source (importing it would import TensorFlow)."""
    source = _tfds_file("structured", "movielens.py").read_text()
    names = re.findall(r"name='([\w-]+)-ratings'", source)
    assert sorted(names) == sorted(VARIANTS) == sorted(DATASETS)
    assert "'ml-%s' % self.builder_config.format_version" in source
    for v in VARIANTS.values():
        assert v.folder == f"ml-{v.name}"
        assert v.archive_name in source.replace("'\n              '", "")
        assert v.rules is RELEASES[v.name]


def test_layouts():
    assert VARIANTS["100k"].files == ("u.data", "u.item", "u.user")
    assert VARIANTS["1m"].files == ("ratings.dat", "movies.dat", "users.dat")
    for name in ("20m", "25m", "latest-small"):
        assert VARIANTS[name].layout is LAYOUTS["csv"]
        assert VARIANTS[name].files == ("ratings.csv", "movies.csv")
        assert not VARIANTS[name].layout.has_demographics
    assert LAYOUTS["1m"].encoding == LAYOUTS["100k"].encoding == "ISO-8859-1"
    assert LAYOUTS["csv"].encoding == "UTF-8"
    assert layout_of_files({"ratings.csv", "movies.csv", "tags.csv"}) is LAYOUTS["csv"]
    assert layout_of_files({"ratings.csv"}) is None


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"unknown MovieLens dataset '10m'; known: 100k, 1m, "
                                         r"20m, 25m, latest-small"):
        variant("10m")
    assert variant(None) is VARIANTS["100k"]


def test_error_hint_names_the_variant():
    msg = str(DataNotFoundError("boom", "25m"))
    assert "ml-25m.zip" in msg and "/path/to/ml-25m" in msg and "ratings.csv, movies.csv" in msg
    assert str(DataNotFoundError("boom")) == str(DataNotFoundError("boom", "100k"))


# --------------------------------------------------------------------------- folders


LAYOUT_FILES = {
    "100k": {"u.data": "1\t1\t5\t874965758\n", "u.item": "1|T (1995)|||" + "|0" * 19 + "\n",
             "u.user": "1|24|M|technician|85711\n"},
    "1m": {"ratings.dat": "1::1::5::978300760\n", "movies.dat": "1::T (1995)::Comedy\n",
           "users.dat": "1::F::1::10::48067\n"},
    "csv": {"ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.5,1147880044\n",
            "movies.csv": "movieId,title,genres\n1,\"T, The (1995)\",Comedy\n",
            "tags.csv": "userId,movieId,tag,timestamp\n"},
}


def _folder(path: Path, layout: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in LAYOUT_FILES[layout].items():
        (path / name).write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("TWOSTAGE_DATA_DIR", raising=False)
    monkeypatch.delenv("TWOSTAGE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.mark.parametrize("dataset", DATASETS)
def test_data_dir_of_each_variant(tmp_path, dataset):
    v = VARIANTS[dataset]
    d = _folder(tmp_path / "any-name", v.layout.name)
    assert resolve_data_dir(d, dataset=dataset, cache_dir=tmp_path / "c") == d.resolve()
    parent = tmp_path / "datasets"
    sub = _folder(parent / v.folder, v.layout.name)
    assert resolve_data_dir(parent, dataset=dataset) == sub.resolve()
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("have, want, files", [
    ("100k", "1m", "ratings.dat, movies.dat, users.dat"),
    ("100k", "25m", "ratings.csv, movies.csv"),
    ("csv", "100k", "u.data, u.item, u.user"),
    ("1m", "latest-small", "ratings.csv, movies.csv"),
])
def test_folder_of_another_release(tmp_path, have, want, files):
    d = _folder(tmp_path / "mine", have)
    with pytest.raises(DataNotFoundError) as info:
        resolve_data_dir(d, dataset=want, cache_dir=tmp_path / "c")
    msg = str(info.value)
    held = ", ".join(LAYOUTS[have].files)
    assert f"--data-dir {d} points at {d}, which holds the {held} of MovieLens" in msg
    assert f"not the {files} of MovieLens {want}" in msg
    guess = "100k" if have == "100k" else "1m" if have == "1m" else "20m|25m|latest-small"
    assert f"Pass --dataset {guess} to use it" in msg
    assert not (tmp_path / "c").exists()


def test_csv_folder_named_as_another_csv_release(tmp_path):
    """ml-25m and ml-20m have the same file names: the folder name tells them apart."""
    d = _folder(tmp_path / "ml-25m", "csv")
    with pytest.raises(DataNotFoundError, match=r"holds by its name the MovieLens 25m folder "
                                                r"\(ml-25m\), not MovieLens 20m \(ml-20m\)\. "
                                                r"Pass --dataset 25m"):
        resolve_data_dir(d, dataset="20m")
    assert resolve_data_dir(d, dataset="25m") == d.resolve()


def test_env_folder_of_another_release(tmp_path, monkeypatch):
    d = _folder(tmp_path / "ml-100k", "100k")
    monkeypatch.setenv("TWOSTAGE_DATA_DIR", str(d))
    with pytest.raises(DataNotFoundError, match=rf"TWOSTAGE_DATA_DIR={re.escape(str(d))} points"
                                                r" at .* not the ratings.dat, movies.dat, "
                                                r"users.dat of MovieLens 1m"):
        resolve_data_dir(dataset="1m")
    assert resolve_data_dir() == d.resolve()  # 100k: as before


def test_env_parent_of_several_releases(tmp_path, monkeypatch):
    parent = tmp_path / "movielens"
    small = _folder(parent / "ml-100k", "100k")
    big = _folder(parent / "ml-1m", "1m")
    monkeypatch.setenv("TWOSTAGE_DATA_DIR", str(parent))
    assert resolve_data_dir() == small.resolve()
    assert resolve_data_dir(dataset="1m") == big.resolve()


def test_incomplete_folder_names_the_missing_files(tmp_path):
    d = tmp_path / "half"
    d.mkdir()
    (d / "ratings.csv").write_text("x\n")
    with pytest.raises(DataNotFoundError, match=r"which is missing movies.csv \(and has no "
                                                r"ml-latest-small/ subdirectory\)"):
        resolve_data_dir(d, dataset="latest-small")


# --------------------------------------------------------------------------- downloads


def _zip(members: dict[str, bytes | str], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _release_zip(dataset: str) -> bytes:
    v = VARIANTS[dataset]
    return _zip({f"{v.folder}/{n}": t for n, t in LAYOUT_FILES[v.layout.name].items()})


@pytest.fixture
def serve():
    """serve({path: bytes}) -> base URL of a local server answering those paths."""
    servers = []

    def start(routes: dict[str, bytes]) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _get(base: str, cache: Path, dataset: str, body: bytes, path: str = "/a.zip", **kw):
    return resolve_data_dir(dataset=dataset, cache_dir=cache, url=base + path,
                            sha256=hashlib.sha256(body).hexdigest(), size=len(body),
                            progress=False, timeout=5, **kw)


@pytest.mark.parametrize("dataset", ["1m", "25m", "latest-small"])
def test_download_and_cache_each_variant(serve, tmp_path, dataset):
    v = VARIANTS[dataset]
    body = _release_zip(dataset)
    base = serve({"/a.zip": body})
    cache = tmp_path / "cache"
    got = _get(base, cache, dataset, body)
    assert got == (cache / v.folder).resolve()
    assert sorted(os.listdir(cache)) == [v.folder]  # no temporary left
    assert sorted(dl._read_manifest(got)) == sorted(LAYOUT_FILES[v.layout.name])
    assert resolve_data_dir(dataset=dataset, cache_dir=cache, download=False) == got
    (got / v.files[0]).write_text("cut")
    with pytest.raises(dl.CacheDamagedError, match=rf"{v.files[0]} has 3 bytes"):
        resolve_data_dir(dataset=dataset, cache_dir=cache, download=False)
    with pytest.raises(DataNotFoundError, match=r"MovieLens 100k is not in the cache"):
        resolve_data_dir(cache_dir=cache, download=False)  # each variant has its own folder


def test_default_url_and_checksum_are_the_variants(monkeypatch, tmp_path):
    seen = {}

    def fake(cache, v, **kw):
        seen.update(kw, folder=v.folder)
        raise DataNotFoundError("stop", v)

    monkeypatch.setattr(dl, "_download_into_cache", fake)
    with pytest.raises(DataNotFoundError):
        resolve_data_dir(dataset="20m", cache_dir=tmp_path)
    v = VARIANTS["20m"]
    assert (seen["url"], seen["sha256"], seen["size"], seen["folder"]) == (
        v.url, v.sha256, v.size, "ml-20m")


def test_wrong_checksum_of_a_variant_leaves_nothing(serve, tmp_path):
    body = _release_zip("1m")
    base = serve({"/a.zip": body})
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match=r"wrong SHA-256.*not the MovieLens 1m archive"):
        resolve_data_dir(dataset="1m", cache_dir=cache, url=base + "/a.zip", sha256="0" * 64,
                         size=len(body), progress=False)
    assert os.listdir(cache) == []


def test_truncated_archive_of_a_variant_leaves_nothing(serve, tmp_path):
    body = _release_zip("25m")
    base = serve({"/a.zip": body[: len(body) // 2]})
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match=r"wrong size: expected \d+ bytes, got \d+\. The "
                                            r"download is truncated or not the MovieLens 25m"):
        resolve_data_dir(dataset="25m", cache_dir=cache, url=base + "/a.zip", sha256=None,
                         size=len(body), progress=False)
    assert os.listdir(cache) == []


@pytest.mark.parametrize("members, links, why", [
    ({"ml-1m/ratings.dat": "x", "ml-1m/../../evil": "x"}, None, "it contains '..'"),
    ({"/etc/evil": "x"}, None, "it is an absolute path"),
    ({"C:/evil": "x"}, None, "it is an absolute path"),
    ({"ml-1m/ratings.dat": "x"}, {"ml-1m/movies.dat": "/etc/passwd"}, "it is a symbolic link"),
])
def test_archive_entries_outside_the_cache(serve, tmp_path, members, links, why):
    body = _zip(members, links)
    base = serve({"/a.zip": body})
    cache = tmp_path / "cache"
    with pytest.raises(DataNotFoundError, match=re.escape(why) + r"\); it is not the official "
                                                r"MovieLens 1m archive\. Nothing was unpacked"):
        _get(base, cache, "1m", body)
    assert os.listdir(cache) == []
    assert not (tmp_path / "evil").exists()


def test_leftovers_of_any_variant_are_cleaned(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    for folder in ("ml-latest-small", "ml-25m"):
        (cache / f".{folder}-{dead}-x.zip.part").write_bytes(b"partial")
        (cache / f".{folder}-{dead}-y.tmp").mkdir()
    live = cache / f".ml-latest-small-{os.getpid()}-z.zip.part"
    live.write_bytes(b"mine")
    with pytest.raises(DataNotFoundError):
        resolve_data_dir(dataset="latest-small", cache_dir=cache, download=False)
    assert os.listdir(cache) == [live.name]
