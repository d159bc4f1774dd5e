"""``emotion-pipeline serve``: its options, and uvicorn started with limits on what a client may hold.

There is no authentication in the API: it listens on 127.0.0.1 unless told otherwise (the Cloud Run
image passes ``--host 0.0.0.0``; deploy it with ``--no-allow-unauthenticated``, README "Serving").
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from emotion_pipeline.core.storage import GCS_SCHEME

HEADER_BYTES = 32 * 1024  # every request header together; h11 answers 400 past it


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--root", required=True, help="the pipeline's storage root (MLflow store, reports)")
    serve.add_argument("--model-uri", help="models:/<name>@<alias> or models:/<name>/<version> (any registered "
                       "model of the store); default: models:/emotion-classifier@champion")
    serve.add_argument("--embed-weights", help="default: the weights the model was trained with")
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    serve.add_argument("--host", default="127.0.0.1",
                       help="the API has no authentication: 0.0.0.0 only behind IAM or a private network")
    serve.add_argument("--workers", type=int, default=1, help="processes; each loads the models once")
    serve.add_argument("--max-upload-mb", type=float, default=10.0)
    serve.add_argument("--read-timeout", type=float, default=30.0,
                       help="seconds a client has to send its request body (then 408)")
    serve.add_argument("--header-timeout", type=float, default=10.0,
                       help="seconds a connection has to send a request's headers (then it is closed)")
    serve.add_argument("--max-image-mpx", type=float, default=16.0,
                       help="megapixels per photo (then 422), at most the pipeline's own limit")
    serve.add_argument("--max-faces", type=int, default=20, help="faces per photo through the model: the largest")
    serve.add_argument("--max-waiting", type=int, default=8,
                       help="predictions waiting per worker; more are answered 503 with Retry-After")
    serve.add_argument("--limit-concurrency", type=int, default=64,
                       help="connections per worker; more are answered 503 by uvicorn")
    serve.add_argument("--reload-interval", type=float, default=60.0,
                       help="seconds between checks of where the champion alias points (0: never reload)")


def exec_uvicorn(args: argparse.Namespace) -> int:
    """exec uvicorn: ``--workers`` processes, each loading the models in the background (never
    preloaded), reading bodies on its event loop and predicting in a thread (see serve/api.py)."""
    if not args.root.startswith(GCS_SCHEME) and not Path(args.root).expanduser().is_dir():
        print(f"emotion-pipeline serve: the storage root {args.root} does not exist (run the pipeline "
              "first, or check --root); nothing was created", file=sys.stderr)
        return 2
    if args.model_uri:
        from emotion_pipeline.serve.predictor import parse_model_uri

        try:
            parse_model_uri(args.model_uri)
        except ValueError as err:
            print(f"emotion-pipeline serve: --model-uri: {err}", file=sys.stderr)
            return 2
    env = {"EMOTION_PIPELINE_ROOT": args.root, "EMOTION_PIPELINE_MAX_UPLOAD_MB": str(args.max_upload_mb),
           "EMOTION_PIPELINE_READ_TIMEOUT": str(args.read_timeout),
           "EMOTION_PIPELINE_HEADER_TIMEOUT": str(args.header_timeout),
           "EMOTION_PIPELINE_MAX_IMAGE_MPX": str(args.max_image_mpx),
           "EMOTION_PIPELINE_MAX_FACES": str(max(1, args.max_faces)),
           "EMOTION_PIPELINE_MAX_WAITING": str(max(0, args.max_waiting)),
           "EMOTION_PIPELINE_RELOAD_INTERVAL": str(args.reload_interval)}
    if args.model_uri:
        env["EMOTION_PIPELINE_MODEL_URI"] = args.model_uri
    if args.embed_weights:
        env["EMOTION_PIPELINE_EMBED_WEIGHTS"] = args.embed_weights
    os.environ.update(env)
    # MLflow retries a request to a tracking server for minutes (7 times, backoff 2 s); the API
    # retries a failed load itself and checks the alias again later, so one MLflow attempt is enough.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    uvicorn = [sys.executable, "-m", "uvicorn", "--factory", "emotion_pipeline.serve.api:create_app",
               "--host", args.host, "--port", str(args.port), "--workers", str(args.workers),
               "--http", "emotion_pipeline.serve.protocol:HeaderDeadlineProtocol",
               "--h11-max-incomplete-event-size", str(HEADER_BYTES),
               "--limit-concurrency", str(args.limit_concurrency),
               "--timeout-graceful-shutdown", "20", "--timeout-keep-alive", "5"]
    os.execv(sys.executable, uvicorn)
    return 0
