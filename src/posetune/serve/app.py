"""The web service: POST an image, get the pose. One page at ``/``, JSON at ``/predict``, ``/info``, ``/health``.

Every bad input gets a 4xx JSON ``{"detail": ...}`` that names the fix: an empty body (400), a body
over ``max_bytes`` (413, counted while reading, so nothing unbounded is buffered), an image over
``max_pixels`` (413, checked from the header before decoding; Pillow's decompression-bomb guard
maps there too), bytes that are no image (415), a truncated or corrupt image (422), a multipart
upload without the ``file`` field (422), a body not received within ``read_timeout`` (408).

A request's body is read in full before it takes one of the ``max_queue`` slots, so slow uploads
cannot hold the model away from anyone: a slot covers decoding and inference only, and when all are
taken the next request gets 503 with Retry-After. Bodies still arriving are bounded in total bytes
(``max_queue * max_bytes``; a slow upload costs only what it has sent, beyond the total: 503).
Decoding runs in the thread pool (two at a time), inference under a lock, so the event loop never
blocks and memory stays bounded; after a large image the freed memory goes back to the OS.
Requests whose Host header is not in ``allowed_hosts`` get 400 (DNS-rebinding guard); every
response carries ``X-Content-Type-Options: nosniff``.

>>> app = create_app("runs/yoga", engine="onnx")   # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io
import ipaddress
import json
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

import anyio
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, ImageOps
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from posetune.data.images import to_rgb
from posetune.errors import UsageError

DEFAULT_MAX_BYTES = 10_000_000
DEFAULT_MAX_PIXELS = 50_000_000  # a 48 MP phone photo fits; below Pillow's own bomb threshold (~89 MP)
MULTIPART_SLACK = 16_384  # multipart boundaries and part headers around the file itself
DEFAULT_READ_TIMEOUT = 10.0  # seconds for a whole body: a 10 MB photo at 8 Mbit/s
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
TEST_CLIENT_HOST = "testserver"  # the Host header Starlette's (and FastAPI's) TestClient sends
# After work this large, freed memory is handed back to the OS (malloc_trim): a 4 MP decode holds >= 16 MB.
TRIM_AFTER_BYTES = 1_000_000
TRIM_AFTER_PIXELS = 4_000_000
# Formats a photo arrives in. Pillow's other plugins (EPS runs Ghostscript, ...) stay off for uploads.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")

_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": {"file": {"type": "string", "format": "binary"}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


def parse_size(text: str | int) -> int:
    """'10MB' -> 10_000_000, '512KiB' -> 524_288, '2000000' -> 2_000_000."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    s = text.strip().upper().replace(" ", "")
    number = s.rstrip("KMGIB")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise UsageError(f"--max-bytes must be a size like 10MB, 512KiB or 2000000, not '{text}'")
    return int(value * units[unit])


def decode_upload(data: bytes, max_pixels: int, min_side: int) -> tuple[Image.Image, tuple[int, int]]:
    """Upload bytes -> (upright RGB image, its size as sent), or an HTTPException that says what was wrong.

    JPEGs are decoded at a reduced scale that keeps the short side >= min_side, as
    ``posetune.data.images.load_image`` does for files, so the server sees what `posetune predict` sees.
    """
    try:
        img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"image has too many pixels ({exc}); send a smaller photo") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on unknown data
        raise HTTPException(415, f"not an image Pillow can read as {', '.join(UPLOAD_FORMATS)}: "
                                 f"send a JPEG, PNG or WebP photo (HEIC: convert to JPEG first)") from exc
    w, h = img.size
    if w * h > max_pixels:
        raise HTTPException(413, f"image is {w}x{h} = {w * h:,} pixels, over this server's limit of {max_pixels:,}; "
                                 "send a smaller photo")
    try:
        if img.format in ("JPEG", "MPO"):
            scale = min(w, h) / min_side
            if scale >= 2:
                img.draft("RGB", (int(w / scale) + 1, int(h / scale) + 1))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # in place: no second full-size copy when already upright
        return to_rgb(img), (w, h)
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"image has too many pixels ({exc}); send a smaller photo") from exc
    except Exception as exc:  # noqa: BLE001
        reason = "truncated" if "truncated" in str(exc) else f"corrupt ({type(exc).__name__}: {exc})"
        raise HTTPException(422, f"the {img.format} image is {reason}; upload the whole file again") from exc


class _Admission:
    """Counts requests doing model work (event-loop only, so a plain int is safe); beyond the limit: 503."""

    def __init__(self, limit: int):
        self.limit, self.active = limit, 0

    @property
    def full(self) -> bool:
        return self.active >= self.limit

    def __enter__(self) -> _Admission:
        if self.full:
            raise HTTPException(503, f"busy: {self.active} requests in progress; retry in a second",
                                headers={"Retry-After": "1"})
        self.active += 1
        return self

    def __exit__(self, *exc) -> None:
        self.active -= 1


class _Receiving:
    """Bytes of request bodies still arriving, over all requests (event-loop only). Bounds their memory
    however many uploads arrive at once, while a slow upload costs only the bytes it has sent."""

    def __init__(self, limit: int):
        self.limit, self.held, self.uploads = limit, 0, 0

    def take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise HTTPException(503, f"busy: {self.held:,} bytes of uploads are arriving; retry in a second",
                                headers={"Retry-After": "1"})
        self.held += n

    async def read(self, stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
        """``stream``, counted against this budget until it ends or is closed, and stopped past ``limit`` (413)."""
        taken = 0
        self.uploads += 1
        try:
            async for chunk in stream:
                if taken + len(chunk) > limit:
                    raise HTTPException(413, f"upload is over this server's limit of {limit:,} bytes; send a "
                                             "smaller photo (or start the server with a larger --max-bytes)")
                self.take(len(chunk))
                taken += len(chunk)
                yield chunk
        finally:
            self.uploads -= 1
            self.held -= taken


class _SecurityHeaders:
    """Adds ``X-Content-Type-Options: nosniff`` to every response (outermost, so the Host check's 400 gets it too)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                MutableHeaders(scope=message).setdefault("X-Content-Type-Options", "nosniff")
            await send(message)

        await self.app(scope, receive, send_with_headers)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (e.g. musl)
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Hand memory freed by the process back to the OS (glibc ``malloc_trim``); False where there is none.

    ``posetune.runtime.tune_allocator`` (applied by ``posetune serve``) stops glibc from doing this by itself,
    which keeps training fast; without a trim a burst of large uploads left the server ~500 MB larger for good.
    It takes ~25 ms after freeing a few hundred MB, ~0.03 ms when there is nothing to give back.
    """
    trim = _malloc_trim()
    return bool(trim and trim(0))


def parse_hosts(text: str | Sequence[str]) -> list[str]:
    """'pose.example, *.lan' -> ['pose.example', '*.lan']; '*' allows any Host header."""
    hosts = [h.strip().lower() for h in (text.split(",") if isinstance(text, str) else text) if h.strip()]
    for h in hosts:
        if not h or "*" in h[1:] or (h.startswith("*") and h != "*" and not h.startswith("*.")):
            raise UsageError(f"--allowed-hosts takes names like pose.example, 192.168.1.5, [::1] or *.example.lan "
                             f"(or * for any), not '{h}'")
    if not hosts:
        raise UsageError("--allowed-hosts is empty: give host names separated by commas, or * for any")
    return hosts


def default_allowed_hosts(bind: str) -> list[str]:
    """The Host headers `posetune serve --host BIND` accepts unless told: on loopback only the loopback names
    (a page elsewhere cannot reach the server through DNS rebinding), else any (the server is meant to be reached
    by whatever name the network gives it).

    >>> default_allowed_hosts("127.0.0.1"), default_allowed_hosts("0.0.0.0")
    (['localhost', '127.0.0.1', '[::1]'], ['*'])
    """
    try:
        loopback = ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        loopback = bind.lower() == "localhost"
    return list(LOOPBACK_HOSTS) if loopback else ["*"]


def run_info(clf, run: str | Path) -> dict:
    """What /info shows: the run's model.json where there is one, else the export's metadata."""
    meta = clf.meta.to_json() if hasattr(clf.meta, "to_json") else dict(clf.meta)
    model_json = Path(run) / "model.json" if Path(run).is_dir() else Path(run).parent / "model.json"
    if model_json.is_file():
        meta = {**meta, **json.loads(model_json.read_text())}
    metrics = meta.get("metrics") or {}
    return {"backbone": meta.get("backbone"), "arch": meta.get("arch"), "strategy": meta.get("strategy"),
            "classes": list(clf.classes), "preprocessing": meta.get("preprocessing"),
            "metrics": metrics.get("test"), "metrics_all": metrics, "created": meta.get("created")}


def create_app(run: str | Path, engine: str = "torch", max_bytes: int = DEFAULT_MAX_BYTES, top_k: int = 5,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_queue: int = 16, device: str = "auto",
               read_timeout: float = DEFAULT_READ_TIMEOUT, allowed_hosts: str | Sequence[str] | None = None,
               classifier=None, min_confidence: float | None = None) -> FastAPI:
    """The FastAPI app serving RUN with ``engine`` ('auto', 'torch' or 'onnx'); the model loads here, not per request.

    ``allowed_hosts`` (names, ``*.domain`` or ``*`` for any) defaults to the loopback names plus TestClient's
    'testserver': pass ``["*"]``, or the names clients use, to serve on the network. Below ``min_confidence`` the
    answer is 'unsure' (with ``"unsure": true`` and the top-k still given).
    """
    from posetune.predict import load
    from posetune.predict.prediction import check_min_confidence
    from posetune.version import __version__

    if max_bytes <= 0 or max_pixels <= 0 or max_queue <= 0 or top_k <= 0:
        raise UsageError("max_bytes, max_pixels, max_queue and top_k must be positive")
    if not read_timeout > 0:
        raise UsageError(f"--read-timeout must be a positive number of seconds (like 10), not {read_timeout}")
    hosts = parse_hosts(allowed_hosts) if allowed_hosts is not None else [*LOOPBACK_HOSTS, TEST_CLIENT_HOST]
    clf = classifier or load(run, device=device, engine=engine)
    min_confidence = check_min_confidence(min_confidence, clf.classes)  # at start, not as a 500 per request
    engine = clf.engine  # what 'auto' resolved to
    info = {**run_info(clf, run), "engine": engine, "top_k": min(top_k, len(clf.classes)), "max_bytes": max_bytes,
            "max_pixels": max_pixels, "max_queue": max_queue, "read_timeout": read_timeout,
            "posetune_version": __version__}
    page = resources.files("posetune.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    model_lock = threading.Lock()  # one inference at a time: each already uses every core
    decode_slots = threading.BoundedSemaphore(2)  # bounds decoded full-size images held in memory
    admission = _Admission(max_queue)
    receiving = _Receiving(max_queue * max_bytes)  # the same bound as when bodies were read inside a slot
    short_side, interpolation = clf.preprocess.short_side, clf.preprocess.interpolation

    app = FastAPI(title="posetune", version=__version__,
                  description=f"Names the pose in a photo: {', '.join(clf.classes)} ({info['backbone']}, {engine}).")
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    app.add_middleware(_SecurityHeaders)  # added last = outermost

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Runs outside the middleware above (Starlette's ServerErrorMiddleware), so it sets the header itself.
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server log has the details"},
                            status_code=500, headers={"X-Content-Type-Options": "nosniff"})

    def infer(data: bytes) -> dict:
        from posetune.data.images import resize_short_side

        t0 = time.perf_counter()
        with decode_slots:
            img, (width, height) = decode_upload(data, max_pixels, short_side)
            # The engines' first step, done here so that only the small image waits for the model.
            img = resize_short_side(img, short_side, interpolation)
        t1 = time.perf_counter()
        with model_lock:
            t2 = time.perf_counter()
            pred = clf.predict([img], top_k=info["top_k"], batch_size=1, min_confidence=min_confidence)[0]
            t3 = time.perf_counter()
        if pred.error:
            raise HTTPException(422, f"cannot use this image: {pred.error}")
        return {"prediction": pred.label, "probability": pred.probability, "unsure": pred.unsure,
                "top_k": [{"label": c, "probability": p} for c, p in pred.top_k],
                "latency_ms": round((t3 - t2) * 1000, 2), "decode_ms": round((t1 - t0) * 1000, 2),
                "queue_ms": round((t2 - t1) * 1000, 2), "engine": engine, "image": {"width": width, "height": height}}

    async def read_image_bytes(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise HTTPException(400, f"bad Content-Length header: {declared!r}")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        limit = max_bytes + (MULTIPART_SLACK if media == "multipart/form-data" else 0)
        if declared is not None and int(declared) > limit:  # refuse before reading anything
            raise HTTPException(413, f"upload is {int(declared):,} bytes, over this server's limit of "
                                     f"{max_bytes:,}; send a smaller photo (or start with a larger --max-bytes)")
        async with contextlib.aclosing(receiving.read(request.stream(), limit)) as stream:
            if media == "multipart/form-data":
                try:
                    form = await MultiPartParser(request.headers, stream, max_files=1, max_fields=8).parse()
                except MultiPartException as exc:
                    raise HTTPException(400, f"bad multipart upload: {exc.message}; "
                                             "send the image in form field 'file'") from exc
                try:
                    upload = form.get("file")
                    if upload is None or isinstance(upload, str):
                        got = ", ".join(f"'{k}'" for k in form.keys()) or "none"
                        raise HTTPException(422, "send the image in the multipart form field 'file' "
                                                 f"(fields received: {got})")
                    data = await upload.read()
                finally:
                    await form.close()
            else:
                data = b"".join([chunk async for chunk in stream])
        if not data:
            raise HTTPException(400, "empty upload: send image bytes as the body, or a multipart form field 'file'")
        if len(data) > max_bytes:
            raise HTTPException(413, f"image is {len(data):,} bytes, over this server's limit of {max_bytes:,}")
        return data

    async def receive_upload(request: Request) -> bytes:
        """The whole body within ``read_timeout``, or 408 and the connection closed. (After a 413 uvicorn reads
        and discards the rest of the body instead: closing then would reset the connection under a client
        still sending, which would never see the 413.)"""
        try:
            with anyio.fail_after(read_timeout):
                return await read_image_bytes(request)
        except ClientDisconnect as exc:  # nobody reads the answer; without this, a traceback in the log per upload
            raise HTTPException(400, "the client closed the connection before the upload ended") from exc
        except TimeoutError as exc:
            raise HTTPException(408, f"the upload was not received within {read_timeout:g} s; try again "
                                     "(or start the server with a longer --read-timeout)",
                                headers={"Connection": "close"}) from exc

    @app.post("/predict", openapi_extra=_PREDICT_BODY, summary="Name the pose in one photo")
    async def predict(request: Request) -> dict:
        """Upload a photo (multipart field `file`, or the raw bytes as the body): the top-k poses with
        probabilities and the model latency in ms."""
        data = await receive_upload(request)  # before a slot: the slot is for model work only
        large = len(data) >= TRIM_AFTER_BYTES
        try:
            with admission:
                result = await run_in_threadpool(infer, data)
            large = large or result["image"]["width"] * result["image"]["height"] >= TRIM_AFTER_PIXELS
            return result
        except HTTPException as exc:
            large = large or exc.status_code == 422  # failed while decoding: the full-size buffer was allocated
            raise
        finally:
            del data
            if large:
                await run_in_threadpool(release_freed_memory)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        # Everything is inline: the page works offline and loads nothing from elsewhere.
        csp = ("default-src 'none'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
               "script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'self'")
        return HTMLResponse(page, headers={"Content-Security-Policy": csp})

    @app.get("/health", summary="Readiness: the model is loaded and a request would be taken now",
             responses={503: {"description": "saturated: every queue slot is taken, or the upload budget is spent"}})
    async def health(response: Response) -> dict:
        """200 with ``status: ok`` when a request would be taken now; **503** with ``status: saturated`` (and
        Retry-After) when every queue slot is busy or uploads already arriving fill the upload budget, so that a
        load balancer routes elsewhere. As a liveness probe, accept 503 too (the process is alive) or use /info."""
        saturated = admission.full or receiving.held + max_bytes > receiving.limit
        if saturated:
            response.status_code = 503
            response.headers["Retry-After"] = "1"
        return {"status": "saturated" if saturated else "ok", "engine": engine,
                "queue": {"in_progress": admission.active, "max": admission.limit},
                "uploads": {"receiving": receiving.uploads, "bytes": receiving.held, "max_bytes": receiving.limit},
                "in_flight": admission.active}

    @app.get("/info", summary="The model: backbone, strategy, classes, test metrics, limits")
    async def get_info() -> dict:
        return info

    app.state.classifier = clf
    app.state.info = info
    return app
