"""An upload, from the wire to an upright RGB image: the body read within its limits and deadline, then decoded.

Every failure is an HTTPException whose message names the fix.
"""

from __future__ import annotations

import contextlib
import io

import anyio
from fastapi import HTTPException, Request
from PIL import Image, ImageOps
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from posetune.data.images import to_rgb
from posetune.serve.limits import Receiving

MULTIPART_SLACK = 16_384  # multipart boundaries and part headers around the file itself
# Formats a photo arrives in. Pillow's other plugins (EPS runs Ghostscript, ...) stay off for uploads.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO")


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


async def read_image_bytes(request: Request, max_bytes: int, receiving: Receiving) -> bytes:
    """The image bytes of a raw body or of multipart field ``file``, counted against ``receiving`` as they arrive."""
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


async def receive_upload(request: Request, max_bytes: int, receiving: Receiving, read_timeout: float) -> bytes:
    """The whole body within ``read_timeout``, or 408 and the connection closed. (After a 413 uvicorn reads
    and discards the rest of the body instead: closing then would reset the connection under a client
    still sending, which would never see the 413.)"""
    try:
        with anyio.fail_after(read_timeout):
            return await read_image_bytes(request, max_bytes, receiving)
    except ClientDisconnect as exc:  # nobody reads the answer; without this, a traceback in the log per upload
        raise HTTPException(400, "the client closed the connection before the upload ended") from exc
    except TimeoutError as exc:
        raise HTTPException(408, f"the upload was not received within {read_timeout:g} s; try again "
                                 "(or start the server with a longer --read-timeout)",
                            headers={"Connection": "close"}) from exc
