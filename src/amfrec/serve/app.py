"""`amfrec serve`: an HTTP API and a small web page over one trained run, the model loaded once.

- POST /recommend -> ranked items (+ the gate's weights per modality for AMFRec), the same ranking as
  `amfrec recommend` (both go through `amfrec.runs.ranker.Ranker`).
- GET /items?query=&page=&per_page= (title search), /items/{id}, /posters/{id}, /health, /info; GET / = page.
- The live catalogue (AMFRec runs; `amfrec.runs.live_catalogue`): POST /items adds or replaces items (text, an
  image file on the server or base64 bytes, vectors of imported modalities), rankable by the next request;
  DELETE /items/{id} withdraws one (kept, never recommended). Changes are on disk before they are answered.
- Bad input answers 4xx with {"error", "field"}; never a traceback. Bodies over 64 KiB (16 MiB for POST
  /items) answer 413 unread.
- Scoring runs off the event loop, in the main thread (uvicorn serves from a thread of its own), in batches
  (`amfrec.serve.batcher`): concurrent /recommend requests are gathered for at most `max_wait_ms` into one
  model call of at most `max_batch` (`Ranker.rank_batch`: one backbone pass; rows with their own candidates
  and catalogue rows mixed); no wait when every admitted request is already in the batch (a lone client).
  Up to `max_batch` requests are scored while at most `max_queue` more wait; the next one answers 503 with
  Retry-After instead of piling up memory.
"""

from __future__ import annotations

import base64
import binascii
import logging
import tempfile
import threading
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from amfrec.errors import AmfrecError
from amfrec.runs.live_catalogue import ItemSpec, LiveCatalogue
from amfrec.runs.ranker import Query as RankQuery
from amfrec.runs.ranker import Ranker, UnknownItems
from amfrec.serve.batcher import MAX_WAIT_MS, Batcher
from amfrec.serve.schemas import (
    MAX_BODY_BYTES,
    MAX_IMAGE_BYTES,
    MAX_ITEMS_BODY_BYTES,
    Item,
    ItemDetail,
    ItemPage,
    ItemsChanged,
    NewItem,
    NewItemsRequest,
    RecommendRequest,
    RecommendResponse,
)

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"


def error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


class Admission:
    """At most `capacity` requests in flight (one batch scoring, the others waiting); `try_enter` refuses
    the one after."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.inside, self.lock = capacity, 0, threading.Lock()

    def try_enter(self) -> bool:
        with self.lock:
            if self.inside >= self.capacity:
                return False
            self.inside += 1
            return True

    def leave(self) -> None:
        with self.lock:
            self.inside -= 1


def create_app(
    ranker: Ranker,
    max_queue: int = 32,
    max_batch: int = 16,
    max_wait_ms: float = MAX_WAIT_MS,
    batch_thread: bool = True,
) -> FastAPI:
    """The FastAPI app over a loaded `ranker`; `max_queue` bounds the requests waiting for the model,
    `max_batch` / `max_wait_ms` the batches (see the module doc). `app.state.batcher` is the batcher; with
    `batch_thread=False` the caller runs its loop (`app.state.batcher.run()`)."""
    if max_queue < 0:
        raise ValueError(f"max_queue must be >= 0, got {max_queue}")
    app = FastAPI(title="amfrec", version="1", docs_url="/docs", redoc_url=None)
    admission = Admission(max_queue + max_batch)
    app.state.batcher = Batcher(
        lambda queries: _answer_batch(ranker, queries),
        max_batch,
        max_wait_ms,
        lambda: admission.inside,
        thread=batch_thread,
    )
    _add_error_handlers(app)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        items = request.method == "POST" and request.url.path == "/items"
        limit = MAX_ITEMS_BODY_BYTES if items else MAX_BODY_BYTES
        if length is not None and (not length.isdigit() or int(length) > limit):
            return error(413, f"request body over {limit} bytes", "body")
        return await call_next(request)

    _add_recommend_route(app, ranker, admission, app.state.batcher)
    app.state.catalogue = LiveCatalogue(ranker)
    _add_item_routes(app, ranker, app.state.catalogue)
    batcher = app.state.batcher

    @app.get("/health")
    async def health():
        return {"status": "ok", "in_flight": admission.inside, "model_calls": batcher.calls,
                "answered": batcher.items, "model_busy_s": round(batcher.busy_s, 4)}  # fmt: skip

    @app.get("/info")
    async def info():
        backbone = getattr(getattr(ranker.model, "backbone", None), "identity", None)
        params = next(iter(getattr(ranker.model, "parameters", lambda: iter(()))()), None)
        return {"model": ranker.info["model"], "run": str(ranker.run), "data": str(ranker.data.path),
                "items": ranker.data.n_items, "backbone": backbone, "metrics": ranker.metrics,
                "dtype": str(params.dtype).removeprefix("torch.") if params is not None else "float32",
                "max_batch": max_batch, "max_wait_ms": max_wait_ms}  # fmt: skip

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _answer_batch(ranker: Ranker, queries: list[RankQuery]) -> list[tuple[list[dict], dict]]:
    """In the batcher's loop: each query's ranked rows (one model call) and its history's gate weights, read
    while no catalogue change is applied (the lock)."""
    with ranker.lock:
        ranked = ranker.rank_batch(queries)
        gates = [ranker.gate_weights(list(q.seen)) or {} for q in queries]
    return list(zip(ranked, gates, strict=True))


def _add_recommend_route(app: FastAPI, ranker: Ranker, admission: Admission, batcher: Batcher) -> None:
    """POST /recommend: checked here, scored in the batcher's thread (off the event loop), 503 when
    admission is full."""
    data = ranker.data

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest):
        if not admission.try_enter():
            return error(503, "busy: too many requests waiting; retry shortly", None, {"Retry-After": "1"})
        try:
            history = [str(i) for i in body.history]
            candidates = [str(i) for i in body.candidates] if body.candidates else None
            query = ranker.query(history, body.k, candidates, body.exclude_seen)  # UnknownItems -> 4xx
            rows, gates = await batcher(query)
        finally:
            admission.leave()
        hist = [
            Item(item_id=data.items[i].item_id, title=data.items[i].title, gate=gates.get(i))
            for i in query.seen
        ]
        return RecommendResponse(model=ranker.info["model"], items=[Item(**r) for r in rows], history=hist)


def _add_item_routes(app: FastAPI, ranker: Ranker, live: LiveCatalogue) -> None:
    """GET /items (title search, paged), /items/{id}, /posters/{id}; POST /items, DELETE /items/{id}."""
    data = ranker.data
    lowered: list[str] = []  # titles in lower case, searched per request; renewed when the catalogue changes
    version = [-1]

    def titles() -> list[str]:
        if version[0] != live.version:
            lowered[:] = [title.lower() for title in data.titles]
            version[0] = live.version
        return lowered

    def detail(index: int) -> ItemDetail:
        it = data.items[index]
        return ItemDetail(
            item_id=it.item_id,
            title=it.title,
            year=it.year,
            genres=list(it.genres),
            modalities=ranker.modalities_present(index),
            poster_url=f"/posters/{it.item_id}" if live.poster(it.item_id) else None,
            available=it.item_id not in ranker.withdrawn,
        )

    @app.get("/items", response_model=ItemPage)
    async def items(
        query: str = Query("", max_length=200),
        page: int = Query(1, ge=1, le=10_000),
        per_page: int = Query(20, ge=1, le=100),
    ):
        words = query.lower().split()
        lowered = titles()
        hits = [k for k in range(1, data.n_items + 1) if all(w in lowered[k] for w in words)]
        start = (page - 1) * per_page
        found = [detail(k) for k in hits[start : start + per_page]]
        return ItemPage(query=query, page=page, per_page=per_page, total=len(hits), items=found)

    @app.get("/items/{item_id}", response_model=ItemDetail)
    async def item(item_id: str):
        return detail(ranker.indices([item_id], "item_id")[0])

    @app.get("/posters/{item_id}")
    async def poster(item_id: str):
        path = live.poster(item_id)
        if path is None:
            return error(404, f"no poster for item {item_id!r}", "item_id")
        return FileResponse(path)

    @app.post("/items", response_model=ItemsChanged)
    async def add_items(body: NewItemsRequest):
        if not ranker.is_amfrec:
            return error(409, f"a {ranker.info['model']} run ranks only the items it was trained on; live "
                         "items need an AMFRec run", "items")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="amfrec-items-") as tmp:
            specs = [_spec(item, k, Path(tmp)) for k, item in enumerate(body.items)]
            try:
                changed = await run_in_threadpool(live.add, specs)  # encoders: off the event loop
            except AmfrecError as e:
                return error(422, str(e), "items")
        return ItemsChanged(added=changed["added"], updated=changed["updated"], withdrawn=[])

    @app.delete("/items/{item_id}", response_model=ItemsChanged)
    async def withdraw(item_id: str):
        ranker.indices([item_id], "item_id")  # UnknownItems -> 404
        await run_in_threadpool(live.remove, [item_id])
        return ItemsChanged(added=[], updated=[], withdrawn=[item_id])


class BadItem(AmfrecError):
    """A POST /items item that cannot be read; `field` names it (items.K.field)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


def _spec(item: NewItem, k: int, tmp: Path) -> ItemSpec:
    """A request item -> ItemSpec; a base64 image is written to a file in `tmp` (BadItem if it is none)."""
    image = None
    if item.image_path is not None and item.image_base64 is not None:
        raise BadItem(f"items.{k}.image_base64", "give image_path or image_base64, not both")
    if item.image_path is not None:
        image = Path(item.image_path)
        if not image.is_file():
            raise BadItem(f"items.{k}.image_path", f"{item.image_path} is not a file on the server")
    if item.image_base64 is not None:
        try:
            raw = base64.b64decode(item.image_base64, validate=True)
        except (binascii.Error, ValueError):
            raise BadItem(f"items.{k}.image_base64", "not valid base64") from None
        suffix = _image_suffix(raw)
        if suffix is None or len(raw) > MAX_IMAGE_BYTES:
            what = f"not a PNG, JPEG, GIF or WebP image of <= {MAX_IMAGE_BYTES} bytes"
            raise BadItem(f"items.{k}.image_base64", what)
        image = tmp / f"{k}{suffix}"
        image.write_bytes(raw)
    return ItemSpec(item_id=str(item.item_id), title=item.title, year=item.year, genres=tuple(item.genres),
                    fields=dict(item.fields), image=image, vectors=dict(item.vectors))  # fmt: skip


def _image_suffix(raw: bytes) -> str | None:
    """The file suffix of image bytes by their signature, or None."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if raw.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if raw[:6] in (b"GIF87a", b"GIF89a"):
        return ".gif"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return ".webp"
    return None


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON {"error", "field"}: 422 for invalid fields, the HTTP status otherwise."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        # the field's path, without the request part and pydantic's union-branch tags ("str", "int")
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "str", "int")]
        return error(422, first.get("msg", "invalid request"), ".".join(loc) or "body")

    @app.exception_handler(BadItem)
    async def bad_item(request: Request, exc: BadItem):
        return error(422, str(exc), exc.field)

    @app.exception_handler(UnknownItems)
    async def unknown(request: Request, exc: UnknownItems):
        return error(422 if exc.field != "item_id" else 404, str(exc), exc.field)

    @app.exception_handler(AmfrecError)
    async def bad_input(request: Request, exc: AmfrecError):
        field = str(exc).split(":", 1)[0] if ":" in str(exc) else None
        return error(422, str(exc), field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), None)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # a bug, not the client's: logged, no traceback out
        log.exception("internal error on %s", request.url.path)
        return error(500, "internal error (logged on the server)", None)


def serve(
    run: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_queue: int = 32,
    max_batch: int = 16,
    max_wait_ms: float = MAX_WAIT_MS,
) -> None:
    """Load the run once and serve it until interrupted: uvicorn in a thread, the model in this (main)
    thread, where torch's thread pool runs fastest (see `amfrec.serve.batcher`)."""
    import uvicorn

    if max_queue < 0 or not 0 <= max_wait_ms <= 1000:
        raise AmfrecError(f"--max-queue must be >= 0 and --max-wait-ms in [0, 1000], got {max_queue}, "
                          f"{max_wait_ms}")  # fmt: skip
    ranker = Ranker.load(run)
    app = create_app(
        ranker, max_queue=max_queue, max_batch=max_batch, max_wait_ms=max_wait_ms, batch_thread=False
    )
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))

    def http_loop() -> None:
        try:
            server.run()
        finally:  # stopped, or never listening (port taken): end the model loop too
            app.state.batcher.close()

    http = threading.Thread(target=http_loop, name="amfrec-http", daemon=True)
    log.info("serving %s (%s) on http://%s:%d (batches of <= %d, <= %g ms wait)", run, ranker.info["model"],
             host, port, max_batch, max_wait_ms)  # fmt: skip
    http.start()
    try:
        app.state.batcher.run()  # until Ctrl-C (SIGTERM ends the process)
    except KeyboardInterrupt:
        log.info("interrupted")
    finally:
        server.should_exit = True
        http.join(10)
    if not server.started:
        raise AmfrecError(f"amfrec serve: could not listen on {host}:{port} (see the log above)")
