"""The prediction API (Starlette on uvicorn; Cloud Run's contract: listen on $PORT, stateless).

    POST /predict   one image -> faces with boxes and the five emotion probabilities from the
                    registered champion model. The image is the raw request body (any content type:
                    ``curl --data-binary @photo.jpg``) or a multipart part (field ``image``, else the
                    first part, with or without a file name: ``curl -F image=@photo.jpg``).
    GET  /health    200 once a model is loaded; until then 503 with what to do (loading is retried)
    GET  /model     version, metrics, classes, limits

Why asynchronous: the event loop reads request bodies, so a client that stalls mid-upload holds a
coroutine, not a worker, and is cut off after ``read_timeout`` seconds (408). Predictions run in a
thread, one at a time per process (TensorFlow's own threads use the cores); /health and /model are
answered by the loop at once, never queued behind predictions. Each worker process loads the models
once, in the background, so /health can answer meanwhile.

Bad input is a 4xx JSON error, never a 500: a body over the limit is 413 however it is sent (from
Content-Length before anything is read, or counted while a chunked body streams in), and declared
image dimensions are checked against the API's pixel cap (below the pipeline's) before any pixel is
decoded.

No request costs more than a request (``admission``): at most ``max_faces`` faces per photo go through
ResNet50, at most ``max_waiting`` predictions wait per process (then 503 with Retry-After), and a
prediction whose client hung up is dropped. Errors tell the client what to do; the detail (which can
hold secrets and paths) goes to the log only, once.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from emotion_pipeline.core.errors import BadRequest, Busy, ClientGone, ImageError
from emotion_pipeline.serve.admission import PredictionQueue
from emotion_pipeline.serve.model_holder import ModelHolder
from emotion_pipeline.serve.predictor import Predictor, ServeSettings

if TYPE_CHECKING:  # a TypedDict python-multipart defines for type checkers only
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger(__name__)

STATUS_FOR_IMAGE_ERROR = {"empty": 400, "corrupt": 400, "unsupported": 415, "too_large": 422}
MAX_MULTIPART_PARTS = 8  # a photo and a few form fields; a 126k-part body is refused at part 9
MAX_PART_HEADER_BYTES = 8192


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
        pixel_cap=int(float(os.environ.get("EMOTION_PIPELINE_MAX_IMAGE_MPX", "16")) * 1_000_000),
        max_faces=int(os.environ.get("EMOTION_PIPELINE_MAX_FACES", "20")),
        reload_interval=float(os.environ.get("EMOTION_PIPELINE_RELOAD_INTERVAL", "60")),
    )


def max_waiting_from_env() -> int:
    return int(os.environ.get("EMOTION_PIPELINE_MAX_WAITING", "8"))


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, or ``BadRequest``: 413 past ``limit`` bytes (declared or counted), 408 when
    it has not all arrived ``timeout`` seconds after the headers."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"upload of {int(declared)} bytes is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + timeout
    stream = request.stream()
    while True:
        try:
            chunk = await asyncio.wait_for(anext(stream), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            return b"".join(chunks)
        except TimeoutError:
            raise BadRequest(408, f"the request body did not arrive within {timeout:g} s") from None
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"upload larger than the limit of {limit} bytes")
        chunks.append(chunk)


def image_from_body(body: bytes, content_type: str) -> bytes:
    """The photo: the body itself, or its part when the body is multipart (media types are
    case-insensitive: ``Multipart/Form-Data`` is multipart too)."""
    media_type, _ = parse_options_header(content_type)
    return image_from_multipart(body, content_type) if media_type.startswith(b"multipart/") else body


def image_from_multipart(body: bytes, content_type: str) -> bytes:
    """The ``image`` part of a multipart/form-data body, else its first part, as raw bytes (a part
    without a file name too: ``curl -F image=<photo.jpg`` sends one). At most MAX_MULTIPART_PARTS
    parts with MAX_PART_HEADER_BYTES of headers each (python-multipart calls back per part and header)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest(400, "multipart body without a boundary")
    parts = _MultipartParts()
    parser = MultipartParser(boundary, parts.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as err:
        raise BadRequest(400, f"malformed multipart body: {err}") from err
    return parts.image()


class _MultipartParts:
    """The parts of a multipart body as python-multipart calls back with them: each its form field's
    name and its bytes; ``BadRequest`` past MAX_MULTIPART_PARTS parts or MAX_PART_HEADER_BYTES of one
    part's headers."""

    def __init__(self) -> None:
        self.parts: list[tuple[bytes, bytearray]] = []
        self._field, self._value, self._header_bytes = b"", b"", 0

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self._on_part_begin, "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value, "on_header_end": self._on_header_end,
                "on_part_data": self._on_part_data}

    def image(self) -> bytes:
        """The ``image`` part, else the first part, else nothing."""
        named = [data for name, data in self.parts if name == b"image"]
        return bytes(named[0] if named else self.parts[0][1] if self.parts else b"")

    def _on_part_begin(self) -> None:
        if len(self.parts) == MAX_MULTIPART_PARTS:
            raise BadRequest(400, f"more than {MAX_MULTIPART_PARTS} multipart parts: send the photo alone")
        self.parts.append((b"", bytearray()))
        self._header_bytes = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._value += data[start:end]

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise BadRequest(400, f"multipart part headers longer than {MAX_PART_HEADER_BYTES} bytes")

    def _on_header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            name = parse_options_header(self._value)[1].get(b"name", b"")
            self.parts[-1] = (name, self.parts[-1][1])
        self._field, self._value = b"", b""

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1][1].extend(data[start:end])


def error(code: int, message: str, headers: Mapping[str, str] | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=code, headers=headers)


def logged_once(endpoint):
    """An unexpected exception becomes a JSON 500 saying only that the server failed, logged here
    once with its traceback (Starlette's own 500 handler re-raises, so uvicorn logged it again)."""
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception:  # noqa: BLE001 - the client learns nothing of it but that it failed
            log.exception("%s %s failed", request.method, request.url.path)
            return error(500, "internal error: the server log has the details; retrying will not help")
    return guarded


def create_app(settings: ServeSettings | None = None) -> Starlette:
    if not logging.getLogger().handlers:  # uvicorn configures only its own loggers
        logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s")
    endpoints = Endpoints(settings or settings_from_env(), max_waiting_from_env())

    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return error(err.status_code, err.detail, headers=err.headers)  # 404, 405 (with Allow) as JSON

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        endpoints.holder.start()
        yield
        endpoints.holder.stop()

    # Starlette types every handler as taking any Exception; it calls this one with HTTPExceptions only.
    return Starlette(routes=[
        Route("/health", logged_once(endpoints.health), methods=["GET"]),
        Route("/model", logged_once(endpoints.model), methods=["GET"]),
        Route("/predict", logged_once(endpoints.predict), methods=["POST"]),
    ], exception_handlers={HTTPException: http_error}, lifespan=lifespan)  # type: ignore[dict-item]


class Endpoints:
    """The API's endpoints over one model (``holder``, loaded in the background and reloaded when the
    champion moves) and one queue of predictions (``queue``, at most ``max_waiting`` waiting)."""

    def __init__(self, settings: ServeSettings, max_waiting: int) -> None:
        self.settings = settings
        self.holder = ModelHolder(settings)
        self.queue = PredictionQueue(max_waiting)

    async def health(self, request: Request) -> JSONResponse:
        predictor = self.holder.predictor
        if predictor is None:
            return self.not_ready()
        return JSONResponse({"status": "ready", "model_version": predictor.info["model_version"]})

    async def model(self, request: Request) -> JSONResponse:
        predictor = self.holder.predictor
        return JSONResponse(predictor.info) if predictor else self.not_ready()

    async def predict(self, request: Request) -> Response:
        try:
            data = await self._image(request)
        except BadRequest as err:
            return error(err.status, str(err))
        predictor = self.holder.predictor
        if predictor is None:
            return self.not_ready()
        if not data:
            return error(400, "no image: send it as the raw request body or as the multipart field 'image'")
        return await self._prediction(predictor, data, request)

    def not_ready(self) -> JSONResponse:
        return error(503, self.holder.problem, headers={"Retry-After": "5"}, status="not ready")

    async def _image(self, request: Request) -> bytes:
        """The uploaded photo's bytes (``BadRequest`` when the body is too large, too slow or malformed)."""
        body = await read_body(request, self.settings.max_upload_bytes, self.settings.read_timeout)
        # In a thread: a multipart body is parsed by pure Python, which would hold the event loop.
        return await run_in_threadpool(image_from_body, body, request.headers.get("content-type", ""))

    async def _prediction(self, predictor: Predictor, data: bytes, request: Request) -> Response:
        """The prediction for ``data`` once it is its turn in the queue, or why there is none."""
        try:
            return JSONResponse(await self.queue.run(lambda left: predictor.predict(data, left), request.receive))
        except ImageError as err:
            return error(STATUS_FOR_IMAGE_ERROR.get(err.status, 400), str(err), status=err.status)
        except Busy as err:
            return error(503, f"busy: too many predictions waiting; retry after {err.retry_after} s",
                         headers={"Retry-After": str(err.retry_after)})
        except ClientGone as err:
            log.info("dropped a prediction: its client left (%s)", err)
            return Response(status_code=499)  # nobody reads it; nginx's code for a closed request
