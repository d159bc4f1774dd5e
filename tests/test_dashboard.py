"""The Streamlit dashboard on a real pipeline output: with AppTest, and in a real headless Chromium."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import free_port, stop, wait_for_port
from .browser import Browser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
SCRIPT = Path(__file__).resolve().parents[1] / "emotion_pipeline" / "serve" / "dashboard.py"


def test_every_page_renders_with_apptest(trained_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    config, results = trained_root
    monkeypatch.setenv("EMOTION_PIPELINE_ROOT", config.root)
    app = AppTest.from_file(str(SCRIPT), default_timeout=300).run()
    assert not app.exception
    assert app.header[0].value == "Dataset"
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["photos"] == str(results["merge"].images)
    assert len(app.get("image")) >= 6  # the gallery of labelled faces

    app.sidebar.radio[0].set_value("Monitoring").run()
    assert not app.exception and app.header[0].value == "Monitoring"
    assert any("Alerted shards" in m.value for m in app.markdown)

    app.sidebar.radio[0].set_value("Model").run()
    assert not app.exception and app.header[0].value == "Model"
    version = results["train"].model_version
    assert any(f"Model version {version}" in s.value for s in app.subheader)
    assert len(app.dataframe) == 4  # metrics, per-class, the caption check, MLflow runs
    assert any("Caption check" in s.value for s in app.subheader)

    app.sidebar.radio[0].set_value("Try it").run()
    assert not app.exception and app.header[0].value == "Try it"


def test_pages_in_a_real_browser(trained_root, tmp_path):
    config, results = trained_root
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "emotion-pipeline"), "dashboard", "--root", config.root,
         "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )
    browser = None
    try:
        wait_for_port(port, process, timeout=120)
        browser = Browser(tmp_path / "chromium")
        expected = {
            "Dataset": ["Photos by status", "Examples per emotion", "no-face rate"],
            "Monitoring": ["Alerted shards", "Drift timeline"],
            "Model": [f"Model version {results['train'].model_version}", "Caption check", "Training runs (MLflow)"],
            "Try it": ["A photo with people"],
        }
        for page, texts in expected.items():
            text = browser.open(f"http://127.0.0.1:{port}/?page={page.replace(' ', '%20')}", texts)
            for wanted in texts:
                assert wanted in text, (page, wanted)
            pixels = browser.screenshot(tmp_path / f"{page.replace(' ', '_')}.png")
            assert pixels.std() > 3, page  # something was drawn (a blank shell is ~1)
    finally:
        if browser:
            browser.close()
        stop(process)
