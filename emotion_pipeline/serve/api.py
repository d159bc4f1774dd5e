"""The prediction API (Flask, served by gunicorn; Cloud Run's contract: listen on $PORT, stateless).

    POST /predict   one image (multipart field "image", or the raw body) -> faces with boxes and the
                    five emotion probabilities from the registered champion model
    GET  /health    200 once the model is loaded, 503 while loading, 500 if loading failed
    GET  /model     version, metrics, classes

Each gunicorn worker loads the models once, in the background, so /health can answer meanwhile.
Bad input is a 4xx JSON error, never a 500: the upload limit is enforced from Content-Length before
the body is read, and declared image dimensions are checked before any pixel is decoded.
"""
from __future__ import annotations

import logging
import os
import threading

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from ..images import ImageError
from .predictor import Predictor, ServeSettings

log = logging.getLogger(__name__)

STATUS_FOR_IMAGE_ERROR = {"empty": 400, "corrupt": 400, "unsupported": 415, "too_large": 422}


def settings_from_env() -> ServeSettings:
    root = os.environ.get("EMOTION_PIPELINE_ROOT")
    if not root:
        raise RuntimeError("set EMOTION_PIPELINE_ROOT to the pipeline's storage root (folder or gs://...)")
    return ServeSettings(
        root=root,
        model_uri=os.environ.get("EMOTION_PIPELINE_MODEL_URI") or None,
        embed_weights=os.environ.get("EMOTION_PIPELINE_EMBED_WEIGHTS") or None,
        max_upload_bytes=int(float(os.environ.get("EMOTION_PIPELINE_MAX_UPLOAD_MB", "10")) * 1024 * 1024),
    )


def create_app(settings: ServeSettings | None = None) -> Flask:
    settings = settings or settings_from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    state: dict = {"predictor": None, "error": None}

    def load() -> None:
        try:
            state["predictor"] = Predictor(settings)
        except Exception as err:  # reported by /health, so an orchestrator sees why
            log.exception("model loading failed")
            state["error"] = f"{type(err).__name__}: {err}"

    threading.Thread(target=load, name="load-model", daemon=True).start()

    def error(code: int, message: str, **extra):
        return jsonify({"error": message, **extra}), code

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        if err.code == 413:
            return error(413, f"upload larger than the limit of {settings.max_upload_bytes} bytes")
        return error(err.code or 500, err.description or err.name)

    def ready():
        if state["predictor"] is not None:
            return state["predictor"], None
        if state["error"]:
            return None, error(500, "model failed to load", detail=state["error"])
        return None, error(503, "model is loading, retry shortly")

    @app.get("/health")
    def health():
        predictor, problem = ready()
        return problem or jsonify({"status": "ready", "model_version": predictor.info["model_version"]})

    @app.get("/model")
    def model():
        predictor, problem = ready()
        return problem or jsonify(predictor.info)

    @app.post("/predict")
    def predict():
        predictor, problem = ready()
        if problem:
            return problem
        if request.files:
            upload = request.files.get("image") or next(iter(request.files.values()))
            data = upload.read()
        else:
            data = request.get_data()
        if not data:
            return error(400, "no image: send it as the multipart field 'image' or as the raw request body")
        try:
            return jsonify(predictor.predict(data))
        except ImageError as err:
            return error(STATUS_FOR_IMAGE_ERROR.get(err.status, 400), str(err), status=err.status)

    return app
