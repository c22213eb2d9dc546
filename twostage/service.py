"""``twostage serve``: both stages behind an HTTP service (FastAPI + pydantic on uvicorn).

FastAPI validates every request body against a pydantic model (types, bounds, unknown fields)
and writes the OpenAPI page (``/docs``, ``/openapi.json``) from the same models; uvicorn is
the ASGI server the FastAPI documentation deploys with. Endpoints (none writes to disk):

- ``POST /recommend``: :class:`RecommendRequest` -> :class:`RecommendResponse`, the re-ranked top
  k per user as ``twostage recommend`` computes it (``twostage.engine``); requests that arrive
  together are scored together (``twostage.batching``);
- ``GET /healthz``; ``GET /metadata``: model, schema fingerprint, catalogue, index kind, limits,
  versions.

Bad input is answered with a JSON error ``{"error": ..., "field": ...}`` naming the field, never
a traceback: 400 malformed JSON, 422 a value the model refuses, 413 a body over
:data:`MAX_BODY_BYTES`, 408 a body not received within the request timeout, 503 while shutting
down or when :data:`MAX_QUEUED_USERS` users wait. A client that does not send a complete request
head within the request timeout is disconnected (:class:`TimedH11Protocol`). On SIGTERM or
SIGINT the server stops accepting connections, finishes the requests it holds and exits 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import platform
import signal
import sys
from dataclasses import dataclass
from typing import Annotated, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import __version__
from .batching import MicroBatcher, ShuttingDown
from .engine import Engine, Query, open_engine

MAX_USERS = 1000
"""Users of one request (``user_ids``); 10,000 in one request is refused (422)."""
MAX_BODY_BYTES = 1 << 20
"""A request body above 1 MiB is refused (413) before it is parsed."""
MAX_EXCLUDED_ITEMS = 10_000
MAX_HISTORY_ITEMS = 10_000
"""Items of a request's ``history`` (the query tower reads the most recent of them, as many as
the run's ``--history-length``, 50 by default)."""
MAX_FILTER_VALUES = 100
MAX_QUEUED_USERS = 100_000
"""Users waiting for the model before new requests are refused (503) instead of queued."""
MAX_TIMESTAMP = 4_102_444_800
"""2100-01-01 UTC: a query time is unix seconds in [0, MAX_TIMESTAMP]."""
REQUEST_TIMEOUT_S = 10.0
"""Default time for a client to send a request's head, and then its body."""
BATCH_WAIT_MS = 0.0
"""Default bound of a batch's wait for more requests: none. A batch takes the requests that
queued while the model was busy, which under load already makes batches of tens; a wait only
adds latency at low load (measured with benchmarks/serve.py's client on a 2-core machine: 1 ms
halved the requests/s of one client and gained nothing at 64)."""
BATCH_USERS = 256
OPTIONS_ENV = "TWOSTAGE_SERVE_OPTIONS"   # the options of a --workers N worker process (JSON)

UserId = Union[Annotated[str, StringConstraints(strict=True, max_length=256)], StrictInt]
ItemId = Annotated[str, StringConstraints(strict=True, max_length=1024)]
FeatureName = Annotated[str, StringConstraints(strict=True, max_length=64)]
CategoryValue = Annotated[str, StringConstraints(strict=True, max_length=256)]


class RecommendRequest(BaseModel):
    """One user (``user_id``) or a batch (``user_ids``, at most :data:`MAX_USERS`)."""

    model_config = ConfigDict(extra="forbid")
    user_id: UserId | None = Field(None, description="a user id as in the ratings file")
    user_ids: list[UserId] | None = Field(None, min_length=1, max_length=MAX_USERS)
    timestamp: StrictInt | None = Field(None, ge=0, le=MAX_TIMESTAMP, description=(
        "query time, unix seconds (default: the latest time of the training data)"))
    k: StrictInt = Field(10, ge=1, description="items per user, at most the catalogue")
    num_candidates: StrictInt | None = Field(None, ge=1, description=(
        "candidates retrieved before re-ranking (C = min(max(k, this), catalogue); default: "
        "the model's)"))
    exclude_items: list[ItemId] = Field(default_factory=list, max_length=MAX_EXCLUDED_ITEMS,
                                        description="item ids (titles) never to recommend")
    exclude_seen: StrictBool = Field(False, description=(
        "remove the titles each user rated in training (run folders, and exports that stored "
        "them: see /metadata)"))
    filter: dict[FeatureName, Annotated[list[CategoryValue], Field(
        min_length=1, max_length=MAX_FILTER_VALUES)]] | None = Field(None, description=(
            "only items whose category feature has one of the values, e.g. {\"genres\": "
            "[\"Comedy\"]} (several features: all must match; see /metadata)"))
    history: list[ItemId] | None = Field(None, max_length=MAX_HISTORY_ITEMS, description=(
        "item ids (titles, oldest first) the query tower reads as the user's history instead "
        "of the stored one: for a user the model never saw; models with a history feature "
        "only, with user_id"))


class Item(BaseModel):
    item: str
    row: int
    retrieval_score: float
    ranking_score: float


class UserResult(BaseModel):
    user_id: str
    known_user: bool
    items: list[Item]


class RecommendResponse(BaseModel):
    timestamp: int
    k: int
    num_candidates: int
    results: list[UserResult]
    warnings: list[str]


class OptionError(ValueError):
    """A ``twostage serve`` flag out of its range (a usage error: exit 2)."""


class ErrorBody(BaseModel):
    error: str
    field: str | None


class FieldError(Exception):
    """A request the model cannot answer: ``status``, the field and a one-line message."""

    def __init__(self, field: str | None, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


def _error(status: int, field: str | None, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


# --- requests -> queries ---------------------------------------------------------------------
def build_query(engine: Engine, body: RecommendRequest) -> tuple[Query, list[str]]:
    """A validated request as an engine :class:`Query`, with its warnings.

    Raises:
        FieldError: naming the field whose value this model cannot serve.
    """
    if (body.user_id is None) == (body.user_ids is None):
        raise FieldError("user_id", "pass exactly one of user_id (one user) and user_ids (a "
                         f"list of at most {MAX_USERS})")
    size = engine.catalog_size
    for field, value in (("k", body.k), ("num_candidates", body.num_candidates)):
        if value is not None and value > size:
            raise FieldError(field, f"{field}={value} exceeds the catalogue of {size} items; "
                             f"pass at most {size}")
    if body.exclude_seen and engine.seen is None:
        raise FieldError("exclude_seen", f"exclude_seen is not available: {engine.seen_note}")
    users = [body.user_id] if body.user_ids is None else body.user_ids
    ts = engine.default_timestamp if body.timestamp is None else body.timestamp
    excluded = _excluded_rows(engine, body.exclude_items)
    if body.filter is not None:
        excluded = np.union1d(excluded, _filtered_out(engine, body.filter))
    query = Query(np.array([str(u) for u in users], dtype=object),
                  np.full(len(users), ts, dtype=np.int64), body.k,
                  engine.num_candidates if body.num_candidates is None else body.num_candidates,
                  excluded, body.exclude_seen, _history(engine, body))
    return query, _time_warnings(engine, ts)


def _filtered_out(engine: Engine, wanted: dict[str, list[str]]) -> np.ndarray:
    """The catalogue rows ``filter`` removes (excluded inside the retrieval, as
    ``exclude_items``)."""
    try:
        return engine.filter_rows(wanted)
    except KeyError as e:
        offered = (", ".join(engine.categories.features) if engine.categories is not None
                   else f"none ({engine.categories_note})")
        raise FieldError("filter", f"filter: unknown feature {e.args[0]!r}; this model's "
                         f"category features are {offered} (see GET /metadata)") from None
    except ValueError as e:
        feature, value = str(e).split(": ", 1)
        raise FieldError("filter", f"filter: {value!r} is not a value of {feature!r}; its "
                         "values are listed by GET /metadata") from None


def _history(engine: Engine, body: RecommendRequest) -> np.ndarray | None:
    """The catalogue rows of the request's ``history``, or None."""
    if body.history is None:
        return None
    if not engine.history_feature:
        raise FieldError("history", "this model has no history feature (trained without "
                         "model.history), so a history cannot change its answer; drop history")
    if body.user_id is None:
        raise FieldError("history", "history is one user's: send it with user_id, not "
                         "user_ids")
    try:
        return engine.history_of(body.history)
    except KeyError as e:
        at = body.history.index(e.args[0])
        raise FieldError("history", f"history[{at}] {e.args[0]!r} is not an item of the "
                         "catalogue (items are titles as GET /metadata counts them); drop "
                         "it") from None


def _excluded_rows(engine: Engine, titles: list[str]) -> np.ndarray:
    try:
        return engine.rows_of(titles)
    except KeyError as e:
        at = titles.index(e.args[0])
        raise FieldError("exclude_items", f"exclude_items[{at}] {e.args[0]!r} is not an item "
                         "of the catalogue (items are titles as GET /metadata counts them); "
                         "drop it") from None


def _time_warnings(engine: Engine, ts: int) -> list[str]:
    span = getattr(engine, "time_range", None)
    if span is None or span[0] <= ts <= span[1]:
        return []
    return [f"timestamp {ts} is outside the training data's time range {span[0]}..{span[1]}; "
            "its time features are extrapolated"]


def response_body(engine: Engine, query: Query, served, warnings: list[str]) -> dict:
    """The JSON of :class:`RecommendResponse` (padding rows left out)."""
    known = engine.known_users(query.users)
    results = []
    for i, user in enumerate(query.users.tolist()):
        keep = served.rows[i] >= 0
        items = [{"item": t, "row": int(r), "retrieval_score": float(s),
                  "ranking_score": float(p)}
                 for t, r, s, p in zip(served.titles[i][keep], served.rows[i][keep],
                                       served.retrieval_scores[i][keep],
                                       served.ranking_scores[i][keep])]
        results.append({"user_id": user, "known_user": bool(known[i]), "items": items})
    unknown = [u for u, k in zip(query.users.tolist(), known) if not k]
    if unknown:
        warnings = [*warnings, f"{len(unknown)} user(s) not in the training data (e.g. "
                    f"{unknown[0]!r}): the out-of-vocabulary embedding is used"]
    return {"timestamp": int(query.timestamps[0]), "k": query.k,
            "num_candidates": query.candidates(engine.catalog_size), "results": results,
            "warnings": warnings}


# --- the app ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """The service's bounds (``twostage serve`` flags): the batcher's wait and size, and the
    time a client has for a request's head and then its body."""

    batch_wait_ms: float = BATCH_WAIT_MS
    batch_users: int = BATCH_USERS
    request_timeout_s: float = REQUEST_TIMEOUT_S


def create_app(engine: Engine, limits: Limits = Limits()) -> FastAPI:
    """The ASGI app serving ``engine`` (a plain function: tests build it without a process).

    Args:
        engine: ``twostage.engine.open_engine(PATH)``.
        limits: batching and timeouts.
    Returns:
        The FastAPI app; its lifespan starts and stops the micro-batcher.
    """
    batcher = MicroBatcher(engine.serve, lambda q: len(q.users), limits.batch_users,
                           limits.batch_wait_ms / 1000)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.close()

    app = FastAPI(title="twostage serve", version=__version__, lifespan=lifespan,
                  description="Two-stage recommendations (retrieval + ranking) of "
                  f"{engine.kind} {engine.path.name}")
    app.state.batcher, app.state.engine = batcher, engine
    _add_error_handlers(app)
    _add_routes(app, engine, batcher, limits)
    return BodyLimit(app, MAX_BODY_BYTES, limits.request_timeout_s)


def _add_routes(app: FastAPI, engine: Engine, batcher: MicroBatcher, limits: Limits) -> None:
    errors = {s: {"model": ErrorBody} for s in (400, 408, 413, 422, 503)}

    @app.post("/recommend", response_model=RecommendResponse, responses=errors)
    async def recommend(body: RecommendRequest) -> JSONResponse:
        """The re-ranked top k of each user (``twostage recommend``'s two stages)."""
        query, warnings = build_query(engine, body)
        if batcher.waiting_users + len(query.users) > MAX_QUEUED_USERS:
            raise FieldError(None, f"{MAX_QUEUED_USERS:,} users are waiting for the model; "
                             "retry later", 503)
        try:
            served = await batcher.submit(query)
        except ShuttingDown as e:
            raise FieldError(None, f"{e}; retry on another instance", 503) from None
        return JSONResponse(response_body(engine, query, served, warnings))

    @app.get("/healthz")
    async def healthz() -> dict:
        """200 while the model is loaded and the server takes requests."""
        return {"status": "ok"}

    @app.get("/metadata")
    async def metadata() -> dict:
        """What is served, with which limits and library versions."""
        return _metadata(engine, batcher, limits)


def _metadata(engine: Engine, batcher: MicroBatcher, limits: Limits) -> dict:
    import fastapi
    import pydantic
    import uvicorn
    return {
        "model": {"kind": engine.kind, "path": str(engine.path),
                  "backend": getattr(engine, "backend_name", None)},
        "spec_fingerprint": engine.spec_fingerprint, "catalog_size": engine.catalog_size,
        "index_kind": engine.index_kind, "num_candidates": engine.num_candidates,
        "default_timestamp": engine.default_timestamp,
        "exclude_seen": {"available": engine.seen is not None, "note": engine.seen_note},
        "filter": {"available": engine.categories is not None,
                   "features": (engine.categories.describe() if engine.categories is not None
                                else {}),
                   "note": "" if engine.categories is not None else engine.categories_note},
        "history": engine.history_feature,
        "limits": {"max_users": MAX_USERS, "max_body_bytes": MAX_BODY_BYTES,
                   "max_excluded_items": MAX_EXCLUDED_ITEMS,
                   "max_history_items": MAX_HISTORY_ITEMS,
                   "max_filter_values": MAX_FILTER_VALUES,
                   "max_queued_users": MAX_QUEUED_USERS, "max_timestamp": MAX_TIMESTAMP,
                   "request_timeout_s": limits.request_timeout_s},
        "batching": {"max_wait_ms": limits.batch_wait_ms, "max_users": limits.batch_users,
                     "batches": batcher.batches, "largest_batch_requests": batcher.largest},
        "threads": engine.threads,
        "versions": {"twostage": __version__, "python": platform.python_version(),
                     "numpy": np.__version__, "fastapi": fastapi.__version__,
                     "pydantic": pydantic.__version__, "uvicorn": uvicorn.__version__,
                     **engine.versions()}}


def _field_of(loc: tuple) -> str:
    """("body", "user_ids", 3, "int") -> "user_ids[3]" (the union member pydantic tried is
    left out; so is what follows a key: ("body", "filter", "genres", 0) -> "filter"); the body
    itself -> "body"."""
    parts = list(loc[1:]) if loc[:1] == ("body",) else list(loc)
    if not parts or not isinstance(parts[0], str):
        return "body"
    field = parts[0]
    for p in parts[1:]:
        if not isinstance(p, int):
            break
        field += f"[{p}]"
    return field


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            return _error(400, "body", "the body is not valid JSON "
                          f"({first.get('ctx', {}).get('error', 'parse error')}); send one "
                          "JSON object")
        field = _field_of(tuple(first.get("loc", ())))
        if first.get("type") == "extra_forbidden":
            return _error(422, field, f"unknown field {field!r}; the fields are "
                          f"{', '.join(RecommendRequest.model_fields)}")
        return _error(422, field, f"{field}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(FieldError)
    async def refused(request: Request, exc: FieldError) -> JSONResponse:
        return _error(exc.status, exc.field, exc.message)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, None, f"internal error ({type(exc).__name__}); the server keeps "
                      "running: report it with the request that caused it")


class BodyLimit:
    """ASGI middleware: the whole request body is read before the app sees it, at most
    ``max_bytes`` (413 otherwise) within ``timeout_s`` of the first read (408 otherwise), so
    neither a large body nor a client that stops sending holds the app."""

    def __init__(self, app, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    def __getattr__(self, name: str):   # the FastAPI app's state, routes, openapi()
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", ())).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, 413, self._too_big())
        try:
            body = await asyncio.wait_for(self._read(receive), self.timeout_s)
        except asyncio.TimeoutError:
            return await self._refuse(send, 408, f"the request body did not arrive within "
                                      f"{self.timeout_s:g} s; send it at once")
        if body is None:
            return await self._refuse(send, 413, self._too_big())
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, replay, send)

    def _too_big(self) -> str:
        return (f"the request body exceeds {self.max_bytes:,} bytes; send at most "
                f"{MAX_USERS} users per request")

    async def _read(self, receive) -> bytes | None:
        """The body, or None once it exceeds ``max_bytes``."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b""
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _refuse(send, status: int, message: str) -> None:
        payload = json.dumps({"error": message, "field": "body"}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


class HeadDeadline:
    """A deadline for each request's head (request line and headers), mixed into a uvicorn
    HTTP protocol: a connection whose next request head is incomplete after the request
    timeout is closed. uvicorn times out only idle kept-alive connections, so a client that
    sends half a head would hold its connection for ever."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.head_timeout_s = getattr(config, "twostage_request_timeout_s", REQUEST_TIMEOUT_S)
        self._head_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle:   # a new request's head is complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        if (self.cycle is None or self.cycle.response_complete) and \
                not self.transport.is_closing():
            self.transport.close()


class TimedH11Protocol(HeadDeadline, H11Protocol):
    """uvicorn's pure-Python h11 protocol with :class:`HeadDeadline` (``--http h11``)."""


class TimedHttpToolsProtocol(HeadDeadline, HttpToolsProtocol):
    """uvicorn's httptools (llhttp, C) protocol with :class:`HeadDeadline`: the default, as
    parsing in C leaves the one event-loop thread more time for the model
    (docs/results/serve.json against serve_h11.json, ``benchmarks.serve --http``)."""


# ``twostage serve --http``: the HTTP/1.1 parsers offered, the first the default
HTTP_PROTOCOLS = {"httptools": TimedHttpToolsProtocol, "h11": TimedH11Protocol}


# --- running ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """``twostage serve``'s flags (what a --workers process rebuilds its app from)."""

    path: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 1
    backend: str | None = None
    seen: bool = True
    limits: Limits = Limits()
    http: str = "httptools"
    freeze_heap: bool = True

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "limits": self.limits.__dict__})

    @classmethod
    def from_json(cls, text: str) -> "Options":
        d = json.loads(text)
        return cls(**{**d, "limits": Limits(**d["limits"])})


def app_from_environment():
    """The app of a ``--workers N`` worker process, from :data:`OPTIONS_ENV` (uvicorn factory)."""
    opts = Options.from_json(os.environ[OPTIONS_ENV])
    app = create_app(open_engine(opts.path, opts.threads, opts.backend, opts.seen), opts.limits)
    if opts.freeze_heap:
        settle_heap()
    return app


def settle_heap() -> None:
    """Collect once, then move every object alive (the model, torch, FAISS, pandas: millions of
    them) out of the garbage collector's generations (``gc.freeze``), so a full collection
    during serving walks only what requests allocate instead of pausing every request behind
    the whole heap (docs/serving.md measures the tail latency with and without)."""
    gc.collect()
    gc.freeze()


def run(opts: Options, announce=print) -> int:
    """Load the model, bind ``opts.host:opts.port`` (0: a free port), serve until SIGTERM or
    SIGINT, finish the requests in flight.

    Args:
        opts: the flags; ``announce(line)`` gets the line with the bound address.
    Returns:
        0 after a graceful shutdown.
    Raises:
        EngineError, ExportError, RunDirError: PATH cannot be served; OSError: the address
        cannot be bound.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    engine = open_engine(opts.path, opts.threads, opts.backend, opts.seen)
    if opts.workers > 1:
        os.environ[OPTIONS_ENV] = opts.to_json()
        app, engine = "twostage.service:app_from_environment", None   # each worker loads it
    else:
        app = create_app(engine, opts.limits)
        if opts.freeze_heap:
            settle_heap()
    config = uvicorn.Config(app, host=opts.host, port=opts.port, workers=opts.workers,
                            factory=opts.workers > 1, http=HTTP_PROTOCOLS[opts.http],
                            lifespan="on", log_level="warning", access_log=False,
                            timeout_graceful_shutdown=30)
    config.twostage_request_timeout_s = opts.limits.request_timeout_s
    sock = config.bind_socket()
    host, port = sock.getsockname()[:2]
    announce(f"twostage serve: {opts.path} on http://{host}:{port} (API page: "
             f"http://{host}:{port}/docs); SIGTERM or Ctrl-C stops it")
    sys.stdout.flush()
    if opts.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
        return 0
    with _graceful_signals():
        uvicorn.Server(config).run(sockets=[sock])
    return 0


@contextlib.contextmanager
def _graceful_signals():
    """SIGTERM and SIGINT as uvicorn handles them (stop accepting, finish, exit), without the
    re-raise afterwards that would end the process with the signal instead of exit code 0."""
    handlers = {sig: signal.signal(sig, lambda *_: None)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def options(args) -> Options:
    """``twostage serve``'s parsed flags as :class:`Options`.

    Raises:
        OptionError: naming the flag out of its range.
    """
    checks = [("--port", args.port, 0 <= args.port <= 65535, "0 to 65535"),
              ("--workers", args.workers, args.workers >= 1, ">= 1"),
              ("--threads", args.threads, args.threads >= 1, ">= 1"),
              ("--batch-wait-ms", args.batch_wait_ms, 0 <= args.batch_wait_ms <= 1000,
               "0 to 1000"),
              ("--batch-users", args.batch_users, args.batch_users >= 1, ">= 1"),
              ("--request-timeout", args.request_timeout, 0 < args.request_timeout <= 3600,
               "in (0, 3600]")]
    for flag, value, ok, bound in checks:
        if not ok:
            raise OptionError(f"{flag} {value}: must be {bound}")
    return Options(str(args.path), args.host, args.port, args.workers, args.threads,
                   args.backend, args.seen,
                   Limits(args.batch_wait_ms, args.batch_users, args.request_timeout),
                   getattr(args, "http", "httptools"), getattr(args, "freeze_heap", True))


def main(args) -> int:
    """``twostage serve`` (see :func:`run`)."""
    return run(options(args))
