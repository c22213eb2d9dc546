"""`twostage serve` (twostage.service) through real HTTP requests on loopback, against a server
started by the test (uvicorn in a thread, or `python -m twostage serve` for the signal test):
its answers equal `twostage recommend` / `twostage.serving` for a run folder and both exports,
exclusions happen inside the retrieval, and every bad input is a JSON 4xx naming the field while
the server stays up. A tiny synthetic run (2 + 1 epochs) keeps it fast."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastapi  # noqa: E402,F401  (the serve extra, part of dev: a missing one fails, not skips)
import httpx  # noqa: E402
import uvicorn  # noqa: E402

from twostage import serving, service  # noqa: E402
from twostage.cli import main  # noqa: E402
from twostage.data.synthetic import generate  # noqa: E402
from twostage.engine import open_engine  # noqa: E402
from twostage.rundir import RunDir  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CATALOG = 90   # movies of the synthetic data below


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    data = generate(tmp_path_factory.mktemp("ml"), num_users=120, num_movies=CATALOG,
                    num_ratings=3000, seed=3)
    out = tmp_path_factory.mktemp("run")
    assert main(["run", "--backend", "torch", "--data-dir", str(data), "--retrieval-epochs",
                 "2", "--ranking-epochs", "1", "--validation-freq", "2", "--batch-size", "256",
                 "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory):
    """{"torch": folder, "tfrs": folder} exported from the run's torch weights."""
    root = tmp_path_factory.mktemp("exports")
    for to in ("torch", "tfrs"):
        assert main(["export", "--run", str(run_dir), "--to", to, "--out", str(root / to)]) == 0
    return {to: root / to for to in ("torch", "tfrs")}


@contextlib.contextmanager
def serving_app(app, request_timeout_s: float = 10.0, http: str = "httptools"):
    """uvicorn serving ``app`` in a thread on a free loopback port, with the ``http`` protocol
    of ``twostage serve --http`` (default: the default one) -> its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http=service.HTTP_PROTOCOLS[http],
                            lifespan="on", log_level="error")
    config.twostage_request_timeout_s = request_timeout_s
    sock = config.bind_socket()
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def engines(run_dir, exports):
    return {"run": open_engine(run_dir), "torch": open_engine(exports["torch"]),
            "tfrs": open_engine(exports["tfrs"])}


@pytest.fixture(scope="module")
def urls(engines):
    """A server per kind, up for the module."""
    with contextlib.ExitStack() as stack:
        yield {kind: stack.enter_context(serving_app(service.create_app(engine)))
               for kind, engine in engines.items()}


def post(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(url + "/recommend", json=body, timeout=60, **kwargs)


def all_users(run_dir: Path) -> list[str]:
    spec = json.loads((run_dir / "torch" / "feature_spec.json").read_text())
    return [*spec["user_vocab"], "no-such-user"]


def as_arrays(payload: dict) -> dict:
    """A /recommend answer as [N, k] arrays (every user has k items here)."""
    items = [r["items"] for r in payload["results"]]
    return {"titles": np.array([[i["item"] for i in row] for row in items], dtype=object),
            "rows": np.array([[i["row"] for i in row] for row in items]),
            "retrieval_scores": np.array([[i["retrieval_score"] for i in row] for row in items]),
            "ranking_scores": np.array([[i["ranking_score"] for i in row] for row in items])}


def assert_same(got: dict, expected) -> None:
    """Same items in the same order, scores within 1e-5."""
    assert got["titles"].tolist() == expected.titles.tolist()
    np.testing.assert_array_equal(got["rows"], expected.rows)
    for key in ("retrieval_scores", "ranking_scores"):
        np.testing.assert_allclose(got[key], getattr(expected, key), rtol=0, atol=1e-5)


def reference(run_dir: Path, users, ts: int, k: int, num_candidates: int | None = None,
              excluded=None) -> serving.Served:
    """``twostage recommend``'s computation, independently of the service: the run's backend,
    every catalogue row in retrieval order, the first C not in ``excluded`` (per user, a set
    of rows), ranked and re-ranked stably."""
    from twostage.export import load_run_backend
    from twostage.pipeline import Recommendations

    run = RunDir.open(run_dir)
    backend = load_run_backend(run)
    backend.build_index(run.corpus_titles)
    m = len(run.corpus_titles)
    c = min(max(k, num_candidates or backend.config.eval.num_candidates), m)
    users = np.array(users, dtype=object)
    stamps = np.full(len(users), ts, np.int64)
    scores, rows = backend.retrieve(users, stamps, m)
    keep = [[j for j, r in enumerate(line) if r not in (excluded[i] if excluded else ())][:c]
            for i, line in enumerate(rows)]
    rows = np.array([line[j] for line, js in zip(rows, keep) for j in js]).reshape(len(users), c)
    scores = np.array([line[j] for line, js in zip(scores, keep) for j in js],
                      np.float32).reshape(len(users), c)
    ranking = backend.ranking_scores(np.repeat(users, c), np.repeat(stamps, c),
                                     run.corpus_titles[rows.reshape(-1)]).reshape(len(users), c)
    return serving.top_k(Recommendations(rows, scores, ranking), run.corpus_titles, k)


# --- the same answers as offline -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["run", "torch", "tfrs"])
def test_every_user_gets_what_twostage_recommend_gives(run_dir, exports, urls, kind):
    users = all_users(run_dir)
    max_ts = RunDir.open(run_dir).max_timestamp
    for k, ts in ((5, None), (12, max_ts - 86_400 * 30)):
        got = post(urls[kind], {"user_ids": users, "k": k, **({"timestamp": ts} if ts else {})})
        assert got.status_code == 200, got.text
        payload = got.json()
        assert payload["timestamp"] == (ts or max_ts) and payload["num_candidates"] == max(k, 10)
        assert [r["user_id"] for r in payload["results"]] == users
        assert [r["known_user"] for r in payload["results"]] == [True] * (len(users) - 1) + [
            False]
        assert "out-of-vocabulary embedding" in payload["warnings"][-1]
        expected = reference(run_dir, users, ts or max_ts, k)
        assert_same(as_arrays(payload), expected)
        if kind != "run":  # the export's own loader, too
            assert_same(as_arrays(payload), serving.load(exports[kind]).recommend(
                users, ts or max_ts, k))


def test_one_user_matches_the_printed_table_of_twostage_recommend(run_dir, urls, capsys):
    for user in ("7", "no-such-user"):
        capsys.readouterr()
        assert main(["recommend", "--run", str(run_dir), "--user", user, "-k", "6"]) == 0
        table = [line.split(None, 3) for line in capsys.readouterr().out.splitlines()[2:]]
        items = post(urls["run"], {"user_id": user, "k": 6}).json()["results"][0]["items"]
        assert [i["item"] for i in items] == [t[3] for t in table]
        assert [f"{i['ranking_score']:7.4f}".strip() for i in items] == [t[2] for t in table]


def training_rows(run_dir: Path, users: list[str]) -> list[set[int]]:
    """Per user, every catalogue row of a title the user rated in the run's training split
    (rebuilt from the raw ratings and the split, without twostage.evaluation)."""
    from twostage.checkpoint import stored_config
    from twostage.dataset import load_dataset

    dataset = load_dataset(stored_config(run_dir / "torch"), progress=False)
    train = dataset.split.train
    titles = RunDir.open(run_dir).corpus_titles.tolist()
    rated: dict[str, set[str]] = {}
    for u, t in zip(dataset.user_id[train], dataset.movie_title[train]):
        rated.setdefault(u, set()).add(t)
    return [{r for r, t in enumerate(titles) if t in rated.get(u, set())} for u in users]


@pytest.mark.parametrize("num_candidates", [None, 30])
def test_exclusions_are_applied_inside_the_retrieval(run_dir, urls, num_candidates):
    """exclude_seen + exclude_items: the candidates are the first C rows not excluded (then
    ranked), for every user; the exports exclude the same items as the run folder."""
    users = all_users(run_dir)
    titles = RunDir.open(run_dir).corpus_titles
    banned = [str(t) for t in titles[[0, 5, 17]]]
    banned_rows = {r for r, t in enumerate(titles) if t in banned}
    seen = training_rows(run_dir, users)
    assert min(len(s) for s in seen[:-1]) > 0 and not seen[-1]
    body = {"user_ids": users, "k": 8, "exclude_items": banned,
            **({"num_candidates": num_candidates} if num_candidates else {})}
    ts = RunDir.open(run_dir).max_timestamp
    excluded = [s | banned_rows for s in seen]
    expected = reference(run_dir, users, ts, 8, num_candidates, excluded)
    items_only = reference(run_dir, users, ts, 8, num_candidates, [banned_rows] * len(users))
    for kind in ("run", "torch", "tfrs"):   # the exports read the seen titles they stored
        got = post(urls[kind], {**body, "exclude_seen": True})
        assert got.status_code == 200, got.text
        arrays = as_arrays(got.json())
        assert_same(arrays, expected)
        assert not any(set(row) & ex for row, ex in zip(arrays["rows"].tolist(), excluded))
        assert_same(as_arrays(post(urls[kind], body).json()), items_only)


def genre_rows(run_dir: Path) -> dict[str, set[int]]:
    """Genre -> the catalogue rows of the titles that have it in u.item (any entry of the
    title), read from the raw movies without twostage.serving or twostage.recipes."""
    from twostage.checkpoint import stored_config
    from twostage.dataset import load_dataset

    movies = load_dataset(stored_config(run_dir / "torch"), progress=False).movielens.movies
    by_title: dict[str, set[str]] = {}
    for title, genres in zip(movies["movie_title"], movies["movie_genres"]):
        by_title.setdefault(title, set()).update(genres)
    out: dict[str, set[int]] = {}
    for row, title in enumerate(RunDir.open(run_dir).corpus_titles.tolist()):
        for genre in by_title[title]:
            out.setdefault(genre, set()).add(row)
    return out


def test_a_genre_filter_is_applied_inside_the_retrieval(run_dir, urls):
    """filter {"genres": [g]}: every item has genre g, and the answer is the offline ranking of
    the items with g alone (the first C such rows in retrieval order, ranked), for the run
    folder and both exports, alone and with the other exclusions. Break: drop the filter rows
    from build_query and items without the genre come back."""
    users = all_users(run_dir)
    rows_of = genre_rows(run_dir)
    genre = sorted(rows_of, key=lambda g: len(rows_of[g]))[len(rows_of) // 2]
    other = next(g for g in sorted(rows_of) if g != genre)
    m = len(RunDir.open(run_dir).corpus_titles)
    assert 10 < len(rows_of[genre]) < m
    without = set(range(m)) - rows_of[genre]
    ts = RunDir.open(run_dir).max_timestamp
    seen = training_rows(run_dir, users)
    expected = reference(run_dir, users, ts, 6, excluded=[without] * len(users))
    either = set(range(m)) - rows_of[genre] - rows_of[other]
    expected_either = reference(run_dir, users, ts, 6, excluded=[either] * len(users))
    with_seen = reference(run_dir, users, ts, 6, excluded=[without | s for s in seen])
    for kind, url in urls.items():
        meta = httpx.get(url + "/metadata").json()["filter"]
        assert meta["available"] and genre in meta["features"]["genres"], kind
        got = post(url, {"user_ids": users, "k": 6, "filter": {"genres": [genre]}})
        assert got.status_code == 200, got.text
        arrays = as_arrays(got.json())
        assert set(arrays["rows"].reshape(-1).tolist()) <= rows_of[genre], kind
        assert_same(arrays, expected)
        assert_same(as_arrays(post(url, {"user_ids": users, "k": 6, "filter": {
            "genres": [genre, other]}}).json()), expected_either)
        assert_same(as_arrays(post(url, {"user_ids": users, "k": 6, "exclude_seen": True,
                                         "filter": {"genres": [genre]}}).json()), with_seen)


def test_unknown_filter_values_are_named(urls):
    for body, words in (({"genres": ["Dramas"]}, "'Dramas' is not a value of 'genres'"),
                        ({"tags": ["x"]}, "unknown feature 'tags'")):
        got = post(urls["tfrs"], {"user_id": "7", "filter": body})
        assert got.status_code == 422 and got.json()["field"] == "filter", got.text
        assert words in got.json()["error"]


@pytest.mark.parametrize("ts", [0, service.MAX_TIMESTAMP])
def test_times_at_the_bounds_are_served_with_a_warning(urls, ts):
    for url in urls.values():
        got = post(url, {"user_id": "7", "k": 3, "timestamp": ts})
        assert got.status_code == 200, got.text
        assert len(got.json()["results"][0]["items"]) == 3
    assert "outside the training data's time range" in " ".join(
        post(urls["run"], {"user_id": "7", "timestamp": ts}).json()["warnings"])


def test_concurrent_requests_are_scored_together(engines, run_dir):
    """With a 300 ms bound, 8 requests sent together form fewer batches than requests, and each
    gets the answer it gets alone."""
    users = all_users(run_dir)[:8]
    limits = service.Limits(batch_wait_ms=300, batch_users=256)
    app = service.create_app(engines["torch"], limits)
    with serving_app(app) as url:
        alone = [post(url, {"user_id": u, "k": 4}).json()["results"] for u in users]
        before = app.state.batcher.batches
        answers: dict[int, list] = {}

        def ask(i: int) -> None:
            answers[i] = post(url, {"user_id": users[i], "k": 4}).json()["results"]
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(users))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        batches = app.state.batcher.batches - before
        assert batches < len(users) and app.state.batcher.largest > 1
        for i, answer in answers.items():
            assert [x["item"] for x in answer[0]["items"]] == [x["item"] for x in
                                                                alone[i][0]["items"]]


def test_healthz_metadata_and_openapi(urls, run_dir):
    assert httpx.get(urls["run"] + "/healthz").json() == {"status": "ok"}
    meta = {kind: httpx.get(url + "/metadata").json() for kind, url in urls.items()}
    run = RunDir.open(run_dir)
    assert meta["run"]["spec_fingerprint"] == meta["torch"]["spec_fingerprint"] == \
        run.spec_fingerprint
    assert {m["catalog_size"] for m in meta.values()} == {CATALOG}
    assert meta["run"]["index_kind"] == meta["torch"]["index_kind"] == "flat"
    assert all(m["exclude_seen"]["available"] for m in meta.values())
    assert {"torch", "faiss", "fastapi"} <= set(meta["torch"]["versions"])
    assert "tensorflow" in meta["tfrs"]["versions"]
    assert meta["run"]["limits"]["max_users"] == service.MAX_USERS
    spec = httpx.get(urls["run"] + "/openapi.json").json()
    assert "/recommend" in spec["paths"] and "RecommendRequest" in spec["components"]["schemas"]
    assert httpx.get(urls["run"] + "/docs").status_code == 200


# --- bad input: a JSON 4xx naming the field, and the server stays up -------------------------
BAD = [
    ('{"user_id": "7", ', 400, "body"),                      # malformed JSON
    ('[1, 2]', 422, "body"),
    ({"user_id": "7", "k": "ten"}, 422, "k"),                 # wrong types
    ({"user_id": 4.2}, 422, "user_id"),
    ({"user_ids": "7"}, 422, "user_ids"),
    ({"user_id": "7", "exclude_seen": "yes"}, 422, "exclude_seen"),
    ({"user_id": "7", "exclude_items": [3]}, 422, "exclude_items[0]"),
    ({"user_id": "7", "kk": 3}, 422, "kk"),                   # unknown field
    ({"user_id": "7", "k": 0}, 422, "k"),
    ({"user_id": "7", "k": -3}, 422, "k"),
    ({"user_id": "7", "k": CATALOG + 1}, 422, "k"),
    ({"user_id": "7", "num_candidates": 0}, 422, "num_candidates"),
    ({"user_id": "7", "num_candidates": CATALOG + 1}, 422, "num_candidates"),
    ({"user_ids": ["7"] * 10_000}, 422, "user_ids"),         # over MAX_USERS
    ({"user_ids": []}, 422, "user_ids"),
    ({}, 422, "user_id"),
    ({"user_id": "7", "user_ids": ["8"]}, 422, "user_id"),
    ({"user_id": "7", "exclude_items": ["No Such Movie (1999)"]}, 422, "exclude_items"),
    ('{"user_id": "7", "timestamp": NaN}', 422, "timestamp"),
    ({"user_id": "7", "timestamp": 1e30}, 422, "timestamp"),
    ({"user_id": "7", "timestamp": 10 ** 30}, 422, "timestamp"),
    ({"user_id": "7", "timestamp": -1}, 422, "timestamp"),
    ({"user_id": "7", "history": ["x"]}, 422, "history"),
    ({"user_id": "7", "filter": {"genre": "Drama"}}, 422, "filter"),
    ({"user_id": "7", "filter": {"genre": ["Drama"]}}, 422, "filter"),    # unknown feature
    ({"user_id": "7", "filter": {"genres": ["Dramas"]}}, 422, "filter"),  # unknown value
    ({"user_id": "7", "filter": {"genres": []}}, 422, "filter"),
    ({"user_id": "7", "filter": {"genres": [3]}}, 422, "filter"),
]


@pytest.mark.parametrize("body, status, field", BAD)
def test_bad_input_is_a_json_4xx_naming_the_field(urls, body, status, field):
    url = urls["torch"]
    content = body if isinstance(body, str) else json.dumps(body)
    got = httpx.post(url + "/recommend", content=content, timeout=30,
                     headers={"content-type": "application/json"})
    assert got.status_code == status, got.text
    payload = got.json()
    assert payload["field"] == field and payload["error"]
    assert "Traceback" not in got.text and len(payload["error"].splitlines()) == 1
    assert httpx.get(url + "/healthz").status_code == 200


def test_an_export_without_seen_titles_refuses_exclude_seen(run_dir, tmp_path, monkeypatch):
    """An export made where the run's data could not be read stores no seen titles: it serves,
    says so in /metadata, and ``exclude_seen`` is a 422 naming the field and the fix. Break:
    drop the service's ``engine.seen is None`` check (and the engine's) and the request
    returns seen items with a 200."""
    from twostage import export as export_module
    monkeypatch.setattr(export_module, "training_seen", lambda config, fp: (None, "no data"))
    out = tmp_path / "export"
    assert main(["export", "--run", str(run_dir), "--to", "torch", "--out", str(out)]) == 0
    assert serving.SEEN_FILE not in json.loads((out / serving.MANIFEST).read_text())["files"]
    with serving_app(service.create_app(open_engine(out))) as url:
        meta = httpx.get(url + "/metadata").json()["exclude_seen"]
        assert not meta["available"] and "export it again" in meta["note"]
        got = post(url, {"user_id": all_users(run_dir)[0], "exclude_seen": True})
        assert got.status_code == 422 and "exclude_seen" in got.text, got.text
        assert post(url, {"user_id": all_users(run_dir)[0]}).status_code == 200


def test_stored_seen_titles_are_checked_before_use(exports, tmp_path):
    """seen.npz is listed in export.json (a changed file is refused by its checksum) and its
    arrays are checked (a row beyond the catalogue, re-signed, is refused). Break: drop the
    row-range check of StoredSeen.load and the re-signed file loads."""
    import shutil

    from twostage import io as twostage_io
    folder = tmp_path / "torch"
    shutil.copytree(exports["torch"], folder)
    manifest = json.loads((folder / serving.MANIFEST).read_text())
    seen = serving.StoredSeen.load(folder / serving.SEEN_FILE, CATALOG)
    bad = serving.StoredSeen(seen.user_ids, seen.indptr, seen.rows.copy())
    bad.rows[0] = CATALOG
    bad.save(folder / serving.SEEN_FILE)
    with pytest.raises(serving.ExportError, match="seen.npz changed after the export"):
        serving.TorchExport.load(folder)
    manifest["files"][serving.SEEN_FILE] = twostage_io.sha256_file(folder / serving.SEEN_FILE)
    (folder / serving.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(serving.ExportError, match="seen titles are inconsistent"):
        serving.TorchExport.load(folder)


def test_a_body_over_the_limit_is_413(urls):
    big = {"user_id": "7", "exclude_items": ["x" * 1000] * 10_000}   # about 10 MB
    for chunked in (False, True):
        content = json.dumps(big).encode()
        got = httpx.post(urls["torch"] + "/recommend", timeout=30,
                         content=iter([content]) if chunked else content,
                         headers={"content-type": "application/json"})
        assert got.status_code == 413 and got.json()["field"] == "body"
        assert f"{service.MAX_BODY_BYTES:,} bytes" in got.json()["error"]
    assert httpx.get(urls["torch"] + "/healthz").status_code == 200


@pytest.mark.parametrize("http", list(service.HTTP_PROTOCOLS))
def test_slow_clients_time_out(engines, http):
    """Half a head: the connection is closed; a head with half its body: 408. Both within the
    request timeout (here 0.5 s), while other clients are served, with either HTTP parser.
    Break: drop HeadDeadline from a protocol and its half head is never closed."""
    with serving_app(service.create_app(engines["torch"], service.Limits(request_timeout_s=0.5)),
                     request_timeout_s=0.5, http=http) as url:
        port = int(url.rsplit(":", 1)[1])
        head_only = socket.create_connection(("127.0.0.1", port))
        head_only.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\n")
        half_body = socket.create_connection(("127.0.0.1", port))
        half_body.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
                          b"json\r\nContent-Length: 100\r\n\r\n{\"user_id\": ")
        assert post(url, {"user_id": "7"}).status_code == 200
        for conn in (head_only, half_body):
            conn.settimeout(5)
        assert head_only.recv(1000) == b""                       # closed, nothing sent
        answer = half_body.recv(10_000).decode()
        assert answer.startswith("HTTP/1.1 408") and '"field":"body"' in answer.replace(" ", "")
        assert post(url, {"user_id": "7"}).status_code == 200


def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0(exports):
    """`python -m twostage serve`: a request waiting in the batcher (1 s bound) when SIGTERM
    arrives is answered; a new connection is refused; the process exits 0."""
    proc = subprocess.Popen([sys.executable, "-m", "twostage", "serve", str(exports["torch"]),
                             "--port", "0", "--batch-wait-ms", "1000"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        url = line.split(" on ", 1)[1].split()[0]
        assert httpx.get(url + "/healthz", timeout=30).status_code == 200
        result: dict = {}
        sender = threading.Thread(target=lambda: result.update(
            answer=post(url, {"user_id": "7", "k": 3})))
        sender.start()
        time.sleep(0.4)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/healthz", timeout=5)
        sender.join(30)
        assert result["answer"].status_code == 200
        assert len(result["answer"].json()["results"][0]["items"]) == 3
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


# --- the command line and the thread pools ---------------------------------------------------
@pytest.mark.parametrize("flags, code, message", [
    (["--workers", "0"], 2, "--workers 0: must be >= 1"),
    (["--batch-wait-ms", "5000"], 2, "--batch-wait-ms 5000.0: must be 0 to 1000"),
    (["--port", "70000"], 2, "--port 70000: must be 0 to 65535"),
])
def test_serve_flags_out_of_range_exit_2(exports, flags, code, message, capsys):
    assert main(["serve", str(exports["torch"]), *flags]) == code
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def test_serve_refuses_what_it_cannot_serve(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 1
    assert "not a twostage folder" in capsys.readouterr().err


def test_serving_calls_own_their_thread_pools(exports, monkeypatch):
    """TorchExport.recommend searches with FAISS on one thread and runs the programs on its
    ``threads``, whatever the process's settings, and leaves those as they were."""
    import faiss
    import torch

    export = serving.TorchExport.load(exports["torch"], threads=1)
    seen = {}
    search = export.index.search

    def spy(queries, k):
        seen["faiss"], seen["torch"] = faiss.omp_get_max_threads(), torch.get_num_threads()
        return search(queries, k)
    monkeypatch.setattr(export.index, "search", spy)
    before = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(2)
    torch.set_num_threads(2)
    try:
        export.recommend(["7", "8"], None, 3)
        assert seen == {"faiss": 1, "torch": 1}
        assert (faiss.omp_get_max_threads(), torch.get_num_threads()) == (2, 2)
    finally:
        faiss.omp_set_num_threads(before[0])
        torch.set_num_threads(before[1])


def test_the_loaded_heap_is_frozen_unless_told_not_to(monkeypatch):
    """``twostage serve`` freezes what loading allocated (gc.freeze), so a full collection
    during serving walks only the requests' objects; ``--no-freeze-heap`` keeps the default
    collector. Break: drop the freeze and the frozen count stays 0."""
    import gc

    from twostage.cli import _parser
    parse = lambda *flags: service.options(_parser().parse_args(  # noqa: E731
        ["serve", "PATH", *flags]))
    assert parse().freeze_heap is True and parse("--no-freeze-heap").freeze_heap is False
    assert service.Options.from_json(parse("--no-freeze-heap").to_json()).freeze_heap is False
    gc.unfreeze()
    try:
        service.settle_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
