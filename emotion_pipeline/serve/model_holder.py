"""The model one API worker process serves: loaded in the background, retried until it loads (a
start before MLflow is up recovers by itself), and reloaded when the champion alias moves.

While there is no model, ``problem`` says what to do in words a client may read: never the exception
text, which can hold the tracking URI with its password, SQL statements or server paths (the log
has it all).
"""
from __future__ import annotations

import logging
import threading
import time

from emotion_pipeline.core.errors import StoreMissing
from emotion_pipeline.modeling.tracking import StoreMoved
from emotion_pipeline.serve.predictor import (
    Predictor,
    ServeSettings,
    model_uri,
    registered_version,
    store_client,
)

log = logging.getLogger(__name__)

RETRY_MAX_SECONDS = 30.0


def advice_for(err: Exception) -> str:
    """What a client (or an operator reading /health) should do about a failed load."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, StoreMissing):
        return ("the storage root or its MLflow store does not exist: check EMOTION_PIPELINE_ROOT "
                "(or MLFLOW_TRACKING_URI) and run the pipeline first")
    if isinstance(err, StoreMoved):
        return ("the storage root was moved or restored here and its MLflow store is read-only: start "
                "once with write access to the root so that the store points at it")
    if isinstance(err, MlflowException) and err.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return ("the MLflow tracking server refused the API's login: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (a user with READ on the registered model)")
    if isinstance(err, MlflowException) and err.error_code == "RESOURCE_DOES_NOT_EXIST":
        return "no such registered model or alias yet: run the pipeline until it registers a champion"
    return "the model could not be loaded (is the MLflow tracking server up?); the server log says why"


class ModelHolder:
    def __init__(self, settings: ServeSettings, make_predictor=Predictor) -> None:
        self.settings = settings
        self.predictor: Predictor | None = None
        self.problem = "the model is loading"
        self._make_predictor = make_predictor
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._keep_current, name="model-holder", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _keep_current(self) -> None:
        self._load_until_loaded()
        if "@" not in model_uri(self.settings) or self.settings.reload_interval <= 0:
            return
        while not self._stop.wait(self.settings.reload_interval):
            self._reload_if_moved()

    def _load_until_loaded(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.predictor = self._make_predictor(self.settings)
                return
            except Exception as err:  # noqa: BLE001 - every cause is retried; the log keeps the detail
                log.exception("loading the model failed; retrying in %.0f s", delay)
                self.problem = f"{advice_for(err)} (retrying every {RETRY_MAX_SECONDS:.0f} s at most)"
            self._stop.wait(delay)
            delay = min(2 * delay, RETRY_MAX_SECONDS)

    def _reload_if_moved(self) -> None:
        """Loads the version the alias points at now, if it moved; the old model serves until then."""
        if self.predictor is None:  # stopped before the first model loaded
            return
        current = self.predictor.info["model_version"]
        try:
            client = store_client(self.settings.root)
            version = str(registered_version(client, model_uri(self.settings)).version)
            if version == current:
                return
            started = time.monotonic()
            self.predictor = self._make_predictor(self.settings)
            log.info("the alias moved: now serving version %s (was %s; loaded in %.1f s)",
                     self.predictor.info["model_version"], current, time.monotonic() - started)
        except Exception:  # noqa: BLE001 - keep serving the loaded model; try again at the next check
            log.exception("checking or loading the champion failed; still serving version %s", current)
