"""The Streamlit dashboard on a real pipeline output: its charts' figures, with AppTest, and in a real
headless Chromium with a model and without one (no traceback, no Deploy button, nothing created)."""
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import emotion_pipeline
from tests.browser import Browser
from tests.conftest import FACES, free_port, stop, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
SCRIPT = Path(emotion_pipeline.__file__).parent / "serve" / "dashboard.py"  # the package's, wherever imported
TWO_FACES = FACES / "couple.jpg"


@pytest.fixture(scope="module")
def champion_and_later_root(trained_root, tmp_path_factory):
    """A copy of the trained root where a later version (2) was evaluated but did not become champion:
    its report is version 1's (the dashboard reads reports and the champion alias, not their numbers)."""
    from emotion_pipeline.core import catalog

    config, results = trained_root
    root = tmp_path_factory.mktemp("dashboard") / "with-model"
    shutil.copytree(config.root, root)
    version = results["train"].model_version
    shutil.copytree(root / catalog.EVALUATE_FOLDER / version, root / catalog.EVALUATE_FOLDER / "2")
    return root, version


@pytest.fixture(scope="module")
def untrained_root(trained_root, tmp_path_factory):
    """A copy of the trained root as a run that trained nothing leaves it: data, drift, no model."""
    from emotion_pipeline.core import catalog

    config, _ = trained_root
    root = tmp_path_factory.mktemp("dashboard") / "no-model"
    shutil.copytree(config.root, root, ignore=shutil.ignore_patterns(
        catalog.MLFLOW_FOLDER, catalog.EVALUATE_FOLDER, catalog.TRAIN_FOLDER))
    return root


def monitor_log_of(config):
    from emotion_pipeline.core import catalog
    from emotion_pipeline.core.storage import open_storage

    return catalog.read_monitor_log(open_storage(config.root))


def test_pie_titles_do_not_overlap(trained_root):
    from emotion_pipeline.reporting.charts import label_pie_figure

    config, _ = trained_root
    row = monitor_log_of(config).iloc[0].to_dict()  # shard 0: not judged, a two-line verdict
    assert row["not_judged"]
    fig = label_pie_figure(0, row)
    try:
        renderer = fig.canvas.get_renderer()
        fig.canvas.draw()
        titles = [fig._suptitle, *(ax.title for ax in fig.axes)]
        boxes = [t.get_window_extent(renderer) for t in titles]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (a, b)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_drift_timeline_axis_sign_and_markers(trained_root):
    import matplotlib.pyplot as plt

    from emotion_pipeline.reporting.charts import drift_timeline_figure

    config, _ = trained_root
    log = monitor_log_of(config)
    judged = log[log["judged"].astype(bool)]
    assert not judged.empty and (judged["no_face_change"] < 0).any()  # shard 1 has fewer no-face photos
    fig = drift_timeline_figure(log, config)
    try:
        lines = {line.get_label(): line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
        no_face = next(line for label, line in lines.items() if "no-face change" in label)
        # The log's sign, as the dashboard and the pie titles show it (it was the absolute value here).
        assert list(no_face.get_ydata()) == list(judged["no_face_change"])
        assert all(line.get_marker() not in (None, "None", "") for line in lines.values())
    finally:
        plt.close(fig)
    fig = drift_timeline_figure(log.head(1), config)  # one shard
    try:
        low, high = fig.axes[0].get_xlim()
        assert high - low >= 1, (low, high)  # was -0.045 .. 0.045 around shard 0
        ticks = [t for t in fig.axes[0].get_xticks() if low <= t <= high]
        assert ticks == [0], ticks  # shard numbers, no fractions of a shard
    finally:
        plt.close(fig)


def test_dashboard_drift_lines(trained_root):
    from emotion_pipeline.serve.dashboard import drift_lines

    config, _ = trained_root
    log = monitor_log_of(config)
    spec = drift_lines(log).to_dict()
    assert spec["mark"] == {"type": "line", "point": True}  # one judged shard is a visible point
    values = {(int(v["shard"]), v["statistic"]): v["value"] for v in spec["datasets"][spec["data"]["name"]]}
    judged = log[log["judged"].astype(bool)]
    for _, row in judged.iterrows():
        assert values[(int(row["shard"]), "no_face_change")] == row["no_face_change"]  # signed, as the timeline
    assert not any(shard == 0 for shard, _ in values)  # shard 0 was not judged: no 0 or NaN plotted
    assert drift_lines(log.head(1)) is None  # nothing judged: a message, not an empty 0.000000 chart


def test_boxes_are_numbered_and_scale_with_the_photo():
    from emotion_pipeline.serve.dashboard import BOX_COLOR, draw_boxes

    def red(image):
        return np.all(np.asarray(image) == BOX_COLOR, axis=-1)

    big = draw_boxes(Image.open(TWO_FACES).convert("RGB"), [(600, 500, 300, 300), (1300, 500, 300, 300)])
    assert big.width > 1500
    column = red(big)[:, 1300 + 150]
    assert column[560:780].sum() == 0 and column[490:560].sum() >= big.width / 400  # a top edge that scales
    for x in (600, 1300):  # a filled tag above each box's corner holds its number
        tag = red(big)[440:500, x:x + 30]
        assert 0.3 < tag.mean() < 1, x  # red with a white digit
    small = draw_boxes(Image.new("RGB", (224, 224), "white"), [(50, 50, 100, 100)], numbered=False)
    assert red(small)[50:60, 100].sum() >= 3  # a thumbnail's line stays visible
    assert red(small)[30:50, 50:60].sum() == 0  # one label face: no tag


def test_every_page_renders_with_apptest(champion_and_later_root, trained_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    root, champion = champion_and_later_root
    _, results = trained_root
    monkeypatch.setenv("EMOTION_PIPELINE_ROOT", str(root))
    app = AppTest.from_file(str(SCRIPT), default_timeout=300).run()
    assert not app.exception and not app.error
    assert app.header[0].value == "Dataset"
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["photos"] == str(results["merge"].images)
    assert len(app.get("image")) >= 6  # the gallery of labelled faces

    app.sidebar.radio[0].set_value("Monitoring").run()
    assert not app.exception and not app.error and app.header[0].value == "Monitoring"
    assert any("Alerted shards" in m.value for m in app.markdown)
    assert len(app.get("vega_lite_chart")) == 1  # the drift lines

    app.sidebar.radio[0].set_value("Model").run()
    assert not app.exception and not app.error and app.header[0].value == "Model"
    # The champion, not the newest report (2), and the page says so.
    assert any(f"Model version {champion} " in s.value for s in app.subheader)
    assert any("champion" in c.value and "did not become champion: 2" in c.value for c in app.caption)
    assert len(app.dataframe) == 4  # metrics, per-class, the caption check, MLflow runs
    assert any("Caption check" in s.value for s in app.subheader)
    captions = app.dataframe[2].value
    assert captions.loc["angry", "DeepFace agrees"] == "no data"  # no caption photo of that class
    assert captions.loc["happy", "photos"] > 0 and captions.loc["happy", "DeepFace agrees"] != "no data"
    assert not app.dataframe[3].value.empty  # the training runs

    app.sidebar.radio[0].set_value("Try it").run()
    assert not app.exception and not app.error and app.header[0].value == "Try it"


@contextlib.contextmanager
def dashboard_in_browser(root: Path, profile: Path):
    """``emotion-pipeline dashboard`` on the root, and a headless Chromium to look at it."""
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "emotion-pipeline"), "dashboard", "--root", str(root),
         "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )
    browser = None
    try:
        wait_for_port(port, process, timeout=120)
        browser = Browser(profile)
        yield browser, f"http://127.0.0.1:{port}"
    finally:
        if browser:
            browser.close()
        stop(process)


def visit(browser: Browser, url: str, page: str, texts: list[str], shots: Path) -> str:
    """Open one page, wait for its texts; no traceback, no Deploy button or developer menu on it."""
    text = browser.open(f"{url}/?page={page.replace(' ', '%20')}", texts)
    for wanted in texts:
        assert wanted in text, (page, wanted)
    pixels = browser.screenshot(shots / f"{page.replace(' ', '_')}.png")
    assert pixels.std() > 3, page  # something was drawn (a blank shell is ~1)
    assert "Traceback" not in text and not browser.count('[data-testid="stException"]'), (page, text)
    assert "Deploy" not in text and not browser.count('[data-testid="stAppDeployButton"]'), page
    assert not browser.count('[data-testid="stMainMenu"]'), page
    return text


def test_pages_in_a_real_browser_with_a_model(champion_and_later_root, tmp_path):
    root, champion = champion_and_later_root
    expected = {
        "Dataset": ["Photos by status", "Examples per emotion", "no-face rate"],
        "Monitoring": ["Alerted shards", "Drift timeline"],
        "Model": [f"Model version {champion}", "the champion", "Caption check", "Training runs (MLflow)"],
        "Try it": ["A photo with people", f"model version {champion}"],
    }
    with dashboard_in_browser(root, tmp_path / "chromium") as (browser, url):
        for page, texts in expected.items():
            visit(browser, url, page, texts, tmp_path)
        browser.upload('input[type="file"]', TWO_FACES)
        text = browser.wait_for(["Face 1:", "Face 2:", "numbered as below"], timeout=300)
        assert "Face 2:" in text and "Traceback" not in text, text
        browser.screenshot(tmp_path / "Try_it_faces.png")


def test_pages_in_a_real_browser_without_a_model(untrained_root, tmp_path):
    from emotion_pipeline.core import catalog

    expected = {
        "Dataset": ["Photos by status", "Examples per emotion"],
        "Monitoring": ["Alerted shards", "Drift timeline"],
        "Model": ["No trained model yet"],
        "Try it": ["No champion model under", "emotion-pipeline run"],
    }
    with dashboard_in_browser(untrained_root, tmp_path / "chromium") as (browser, url):
        for page, texts in expected.items():
            visit(browser, url, page, texts, tmp_path)
    assert not (untrained_root / catalog.MLFLOW_FOLDER).exists()  # a read-only view creates no store
    assert not list(untrained_root.rglob(catalog.MLFLOW_DB))
