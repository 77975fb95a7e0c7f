"""An HTTP service that takes image bytes: ``uniadc serve-api`` (FastAPI, on 127.0.0.1 by default).

    POST /predict            body: the image's bytes (Content-Type image/png, image/jpeg, ... or
                             application/octet-stream), or multipart/form-data with one file field
         ?threshold=T        decide at T (aligned-score units) instead of the model's threshold
         ?mask=true          also return the label mask as a base64 PNG at the image's size
    GET  /health             model, version, threshold, defect types, input size, request limit, reloads
    POST /reload             load the model again from where it came from (a new @champion after a promotion)

The answer is the row ``uniadc predict`` writes (score, is_anomaly, defect type and probability, the
threshold used, the regions at the image's own size) plus the image's width and height. A request is
refused with a 4xx that names the problem: no body (400), over ``max_bytes`` (413, checked on the
declared length and again while reading), another content type (415), bytes that are no image or
an image over the model's pixel limit (422, 413). The detector runs one request at a time (a lock):
the CPU is shared, and the model keeps no per-request state, so a bad request leaves it as it was.
``/reload`` loads the new detector beside the serving one and then swaps the reference: a request
already running finishes on the detector it started with, later ones get the new one, none fails.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from uniadc_core import __version__
from uniadc_core.decoding import ImageTooLarge
from uniadc_core.serving.predict import result
from uniadc_core.serving.regions import label_png

if TYPE_CHECKING:  # or runtime.OnnxDetector
    from uniadc_core.serving.detector import Detector

MAX_BYTES = 20 * 1024 * 1024  # a 20 MB body: a large 16-bit TIFF frame fits, a runaway upload does not
IMAGE_TYPES = ("image/", "application/octet-stream")


async def _body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"body of {int(declared):,} bytes is over the limit of {max_bytes:,} bytes; send a smaller image")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"body over the limit of {max_bytes:,} bytes; send a smaller image")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data:
        raise HTTPException(400, "empty body: send the image's bytes, or a multipart form with one file")
    return data


def _multipart_file(content_type: str, data: bytes) -> tuple[bytes, str]:
    """The first file part of a multipart/form-data body, and its file name (stdlib parser: no extra dependency)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + data)
    if message.is_multipart():
        for part in message.iter_parts():  # a file part: one with a file name or an image type (a text field is neither)
            if part.get_filename() or part.get_content_type().startswith(IMAGE_TYPES):
                return part.get_payload(decode=True) or b"", str(part.get_filename() or "<upload>")
    raise HTTPException(400, "multipart body with no file part: send the image as a form field, e.g. curl -F file=@image.png")


def create_app(detector: Detector, model: str = "", max_bytes: int = MAX_BYTES, reload: Callable[[], Detector] | None = None) -> FastAPI:
    """The service for one detector; ``model``: where it came from (a path or models:/NAME@ALIAS), for /health;
    ``reload``: loads it again from there (None: ``/reload`` is refused)."""
    app = FastAPI(title="uniadc", version=__version__, summary="anomaly detection and defect typing for images")
    lock, reloading = threading.Lock(), threading.Lock()
    state = {"detector": detector, "reloads": 0}  # a request reads the detector once: a swap never changes it mid-request

    @app.get("/health")  # on the event loop, not in the worker threads: it answers while they are all scoring
    async def health() -> dict:
        current = state["detector"]
        return {"status": "ok", "model": model, "uniadc_version": __version__, "threshold": current.threshold,
                "defect_types": current.defect_types, "image_size": current.preprocess.size, "max_bytes": max_bytes,
                "reloads": state["reloads"]}

    @app.post("/reload")
    async def reload_model() -> dict:
        if reload is None:
            raise HTTPException(409, "this service was started with a detector object, not a model to load again")
        if not reloading.acquire(blocking=False):
            raise HTTPException(409, "a reload is already running; try again when it has finished")
        try:
            fresh = await run_in_threadpool(reload)
        except Exception as exc:  # noqa: BLE001  (the serving detector stays; the caller learns why)
            raise HTTPException(503, f"could not load {model or 'the model'} again ({exc}); still serving the previous one") from None
        finally:
            reloading.release()
        state["detector"] = fresh
        state["reloads"] += 1
        return await health()

    @app.post("/predict")
    async def predict(request: Request, threshold: float | None = None, mask: bool = False) -> dict:
        content_type = request.headers.get("content-type", "")
        kind = content_type.lower()  # media types are case-insensitive (a multipart boundary is not)
        if not kind.startswith((*IMAGE_TYPES, "multipart/form-data")):
            raise HTTPException(415, f"content type '{content_type or 'none'}': send image/* or application/octet-stream "
                                "bytes, or multipart/form-data with one file")
        data = await _body(request, max_bytes)
        source = "request body"
        if kind.startswith("multipart/form-data"):
            data, name = _multipart_file(content_type, data)
            source = f"uploaded file '{name}'"
            if not data:
                raise HTTPException(400, f"{source} is empty")
        current = state["detector"]
        try:
            detector = current if threshold is None else current.with_threshold(threshold)
        except ValueError as exc:  # nan or inf: every part would pass (or fail) unseen
            raise HTTPException(422, str(exc)) from exc
        return await run_in_threadpool(_score, detector, data, source, mask, lock)

    return app


def _score(detector: Detector, data: bytes, source: str, mask: bool, lock: threading.Lock) -> dict:
    try:
        image = detector.preprocess.decode_bytes(data, source)
    except ImageTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    with lock:
        decision = detector.detect([image])
    row, labels = result(detector, decision, 0, image.shape[:2])
    row.update(height=int(image.shape[0]), width=int(image.shape[1]))
    if mask:
        buf = io.BytesIO()
        label_png(labels).save(buf, format="PNG")
        row["mask_png"] = base64.b64encode(buf.getvalue()).decode("ascii")
    return row


def serve(detector: Detector, model: str, host: str = "127.0.0.1", port: int = 8000, max_bytes: int = MAX_BYTES,
          reload: Callable[[], Detector] | None = None) -> None:
    """Run the service until interrupted (uvicorn; one process)."""
    import uvicorn

    uvicorn.run(create_app(detector, model, max_bytes, reload), host=host, port=port, log_level="info")

