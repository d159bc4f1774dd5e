"""The API as it was before 2026-11-25, the baseline of ``bench/api.py``: Flask on gunicorn sync
workers, the same ``Predictor``. A worker reads a request's body itself, so a stalled client holds it.

    EMOTION_PIPELINE_ROOT=out python -m gunicorn --workers 2 --timeout 300 "bench.api_baseline:create_app()"
"""
from __future__ import annotations

import os
import threading

from flask import Flask, jsonify, request

from emotion_pipeline.labelling.images import ImageError
from emotion_pipeline.serve.predictor import Predictor, ServeSettings


def create_app() -> Flask:
    app = Flask(__name__)
    state: dict = {"predictor": None}

    def load() -> None:
        state["predictor"] = Predictor(ServeSettings(root=os.environ["EMOTION_PIPELINE_ROOT"]))

    threading.Thread(target=load, daemon=True).start()

    @app.get("/health")
    def health():
        return (jsonify({"status": "ready"}), 200) if state["predictor"] else (jsonify({"status": "loading"}), 503)

    @app.post("/predict")
    def predict():
        if not state["predictor"]:
            return jsonify({"error": "loading"}), 503
        data = request.files["image"].read() if request.files else request.get_data()
        try:
            return jsonify(state["predictor"].predict(data))
        except ImageError as err:
            return jsonify({"error": str(err)}), 400

    return app
