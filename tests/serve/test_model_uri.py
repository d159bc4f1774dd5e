"""`serve --model-uri` serves the registered model the URI names, by alias or by version, on a real
MLflow store: also a model whose name is not the pipeline's default (the name used to be ignored:
``models:/<other>@alias`` looked up the default model, ``models:/<other>/N`` loaded the default's N)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FACES, free_port, stop
from tests.serve.api_calls import call, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
CLI = str(Path(sys.executable).parent / "emotion-pipeline")
OTHER = "emotion-classifier-candidates"  # not the pipeline's registered model


@pytest.fixture(scope="module")
def store(trained_root, tmp_path_factory):
    """A copy of the trained root whose registry also holds OTHER: three versions of the champion's
    model (the default model has one), the alias ``candidate`` on version 3."""
    from emotion_pipeline.serve.predictor import _use_tracking_uri, store_client

    config, _ = trained_root
    root = Path(shutil.copytree(config.root, tmp_path_factory.mktemp("model-uri") / "out"))
    client = store_client(str(root))
    # create_model_version resolves a models:/ source through mlflow's process-wide tracking URI, not
    # the client's: point it at this store (it depended on what an earlier test had left there).
    _use_tracking_uri(client.tracking_uri)
    champion = client.get_model_version_by_alias("emotion-classifier", "champion")
    model_id = champion.model_id or champion.source.rsplit("/", 1)[-1]
    client.create_registered_model(OTHER)
    for _ in range(3):
        client.create_model_version(OTHER, champion.source, champion.run_id, model_id=model_id)
    client.set_registered_model_alias(OTHER, "candidate", "3")
    return root, client


def serve(root: Path, uri: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([CLI, "serve", "--root", str(root), "--port", str(port), "--model-uri", uri,
                                "--reload-interval", "1"], stdout=subprocess.DEVNULL, stderr=log.open("w"))
    return process, f"http://127.0.0.1:{port}"


def test_an_alias_of_another_model_is_served_and_followed_when_it_moves(store, tmp_path):
    root, client = store
    process, api = serve(root, f"models:/{OTHER}@candidate", tmp_path / "api.log")
    try:
        wait_until(lambda: call(api, "GET", "/health")[0] == 200, 300,
                   f"ready ({(tmp_path / 'api.log').read_text()[-2000:] if (tmp_path / 'api.log').exists() else ''})")
        status, model = call(api, "GET", "/model")
        assert status == 200 and model["model_name"] == OTHER and model["model_version"] == "3"
        assert model["model_uri"] == f"models:/{OTHER}@candidate"
        status, body = call(api, "POST", "/predict", (FACES / "couple.jpg").read_bytes())
        assert status == 200 and body["model_version"] == "3" and body["faces"]

        client.set_registered_model_alias(OTHER, "candidate", "2")  # the alias of that model, not the default's
        wait_until(lambda: call(api, "GET", "/health")[1].get("model_version") == "2", 180, "version 2 served")
        assert call(api, "GET", "/model")[1]["model_name"] == OTHER
    finally:
        stop(process)


def test_a_version_of_another_model_is_served(store, tmp_path):
    from emotion_pipeline.serve.predictor import Predictor, ServeSettings

    root, _ = store
    predictor = Predictor(ServeSettings(root=str(root), model_uri=f"models:/{OTHER}/2"))
    assert predictor.info["model_name"] == OTHER and predictor.info["model_version"] == "2"
    result = predictor.predict((FACES / "couple.jpg").read_bytes())
    assert result["model_version"] == "2" and len(result["faces"]) >= 2


def test_a_model_uri_that_names_no_model_version_is_refused_at_once(store):
    from emotion_pipeline.serve.predictor import parse_model_uri

    assert parse_model_uri(f"models:/{OTHER}@candidate") == (OTHER, "candidate", None)
    assert parse_model_uri("models:/team/emotion/7") == ("team/emotion", None, "7")
    root, _ = store
    for bad in ("runs:/abc/model", f"models:/{OTHER}", f"models:/{OTHER}/latest", "models:/@champion", OTHER):
        done = subprocess.run([CLI, "serve", "--root", str(root), "--port", str(free_port()), "--model-uri", bad],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "models:/<name>@<alias> or models:/<name>/<version>" in done.stderr, bad
