"""The prediction API (Starlette on uvicorn; Cloud Run's contract: listen on $PORT, stateless).

    POST /predict   one image -> faces with boxes and the five emotion probabilities from the
                    registered champion model. The image is the raw request body (any content type:
                    ``curl --data-binary @photo.jpg``) or a multipart part (field ``image``, else the
                    first part, with or without a file name: ``curl -F image=@photo.jpg``).
    GET  /health    200 once the model is loaded, 503 while loading, 500 if loading failed
    GET  /model     version, metrics, classes

Why asynchronous: the event loop reads request bodies, so a client that stalls mid-upload holds a
coroutine, not a worker, and is cut off after ``read_timeout`` seconds (408). Predictions run in a
thread, one at a time per process (TensorFlow's own threads use the cores); /health and /model are
answered by the loop at once, never queued behind predictions. Each worker process loads the models
once, in the background, so /health can answer meanwhile.

Bad input is a 4xx JSON error, never a 500: a body over the limit is 413 however it is sent (from
Content-Length before anything is read, or counted while a chunked body streams in), and declared
image dimensions are checked against the pipeline's own pixel limit before any pixel is decoded.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..images import ImageError
from .predictor import Predictor, ServeSettings

log = logging.getLogger(__name__)

STATUS_FOR_IMAGE_ERROR = {"empty": 400, "corrupt": 400, "unsupported": 415, "too_large": 422}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def settings_from_env() -> ServeSettings:
    root = os.environ.get("EMOTION_PIPELINE_ROOT")
    if not root:
        raise RuntimeError("set EMOTION_PIPELINE_ROOT to the pipeline's storage root (folder or gs://...)")
    return ServeSettings(
        root=root,
        model_uri=os.environ.get("EMOTION_PIPELINE_MODEL_URI") or None,
        embed_weights=os.environ.get("EMOTION_PIPELINE_EMBED_WEIGHTS") or None,
        max_upload_bytes=int(float(os.environ.get("EMOTION_PIPELINE_MAX_UPLOAD_MB", "10")) * 1024 * 1024),
        read_timeout=float(os.environ.get("EMOTION_PIPELINE_READ_TIMEOUT", "30")),
    )


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, or ``BadRequest``: 413 past ``limit`` bytes (declared or counted), 408 when
    it has not all arrived ``timeout`` seconds after the headers."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"upload of {int(declared)} bytes is larger than the limit of {limit} bytes")
    chunks, size = [], 0
    deadline = time.monotonic() + timeout
    stream = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            return b"".join(chunks)
        except asyncio.TimeoutError:
            raise BadRequest(408, f"the request body did not arrive within {timeout:g} s") from None
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"upload larger than the limit of {limit} bytes")
        chunks.append(chunk)


def image_from_multipart(body: bytes, content_type: str) -> bytes:
    """The ``image`` part of a multipart/form-data body, else its first part, as raw bytes (a part
    without a file name too: ``curl -F image=<photo.jpg`` sends one)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest(400, "multipart body without a boundary")
    parts: list[tuple[bytes, bytearray]] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        parts.append((b"", bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if header["field"].lower() == b"content-disposition":
            name = parse_options_header(header["value"])[1].get(b"name", b"")
            parts[-1] = (name, parts[-1][1])
        header.update(field=b"", value=b"")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data,
    })
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as err:
        raise BadRequest(400, f"malformed multipart body: {err}") from err
    named = [data for name, data in parts if name == b"image"]
    return bytes(named[0] if named else parts[0][1] if parts else b"")


def create_app(settings: ServeSettings | None = None) -> Starlette:
    settings = settings or settings_from_env()
    state: dict = {"predictor": None, "error": None}

    def load() -> None:
        try:
            state["predictor"] = Predictor(settings)
        except Exception as err:  # reported by /health, so an orchestrator sees why
            log.exception("model loading failed")
            state["error"] = f"{type(err).__name__}: {err}"

    def error(code: int, message: str, **extra) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=code)

    def not_ready() -> JSONResponse | None:
        if state["predictor"] is not None:
            return None
        if state["error"]:
            return error(500, "model failed to load", detail=state["error"])
        return error(503, "model is loading, retry shortly")

    async def health(request: Request) -> JSONResponse:
        return not_ready() or JSONResponse(
            {"status": "ready", "model_version": state["predictor"].info["model_version"]})

    async def model(request: Request) -> JSONResponse:
        return not_ready() or JSONResponse(state["predictor"].info)

    async def predict(request: Request) -> JSONResponse:
        try:
            body = await read_body(request, settings.max_upload_bytes, settings.read_timeout)
            content_type = request.headers.get("content-type", "")
            data = image_from_multipart(body, content_type) if content_type.startswith("multipart/") else body
        except BadRequest as err:
            return error(err.status, str(err))
        problem = not_ready()
        if problem:
            return problem
        if not data:
            return error(400, "no image: send it as the raw request body or as the multipart field 'image'")
        try:
            return JSONResponse(await run_in_threadpool(state["predictor"].predict, data))
        except ImageError as err:
            return error(STATUS_FOR_IMAGE_ERROR.get(err.status, 400), str(err), status=err.status)

    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return error(err.status_code, err.detail)  # 404, 405 as JSON like every other error

    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)
        return error(500, f"internal error: {type(err).__name__}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        threading.Thread(target=load, name="load-model", daemon=True).start()
        yield

    return Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/model", model, methods=["GET"]),
        Route("/predict", predict, methods=["POST"]),
    ], exception_handlers={HTTPException: http_error, Exception: internal_error}, lifespan=lifespan)
