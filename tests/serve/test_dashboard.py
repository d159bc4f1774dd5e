"""The Streamlit dashboard on a real pipeline output: its charts' figures, with AppTest, and in a real
headless Chromium with a model and without one (no traceback, no Deploy button, nothing created)."""
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
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


def test_an_uploaded_photo_is_decoded_once(champion_and_later_root, monkeypatch):
    """Try it predicts on, and draws the boxes on, one decoded photo (it decoded every upload twice)."""
    from emotion_pipeline.serve.dashboard import BOX_COLOR, analyse
    from emotion_pipeline.serve.predictor import Predictor, ServeSettings

    root, _ = champion_and_later_root
    model = Predictor(ServeSettings(root=str(root)))
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append(1) or real_open(*args, **kwargs))
    image, result = analyse(model, TWO_FACES.read_bytes())
    assert len(opened) == 1
    assert len(result["faces"]) >= 2 and image.width > 1500  # the photo itself, not a thumbnail
    assert np.all(np.asarray(image) == BOX_COLOR, axis=-1).any()  # the boxes are on it


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
    assert captions.loc["angry", "the label agrees"] == "no data"  # no caption photo of that class
    assert captions.loc["happy", "photos"] > 0 and captions.loc["happy", "the label agrees"] != "no data"
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


def visit(browser: Browser, url: str, page: str, texts: list[str], shots: Path, root: Path | None = None) -> str:
    """Open one page, wait for its texts; no traceback, no Deploy button or developer menu on it, and
    the root called by its name, never by its path on the server."""
    if root is not None:
        texts = [*texts, f"root: {root.name}"]
    text = browser.open(f"{url}/?page={page.replace(' ', '%20')}", texts)
    for wanted in texts:
        assert wanted in text, (page, wanted)
    pixels = browser.screenshot(shots / f"{page.replace(' ', '_')}.png")
    assert pixels.std() > 3, page  # something was drawn (a blank shell is ~1)
    assert "Traceback" not in text and not browser.count('[data-testid="stException"]'), (page, text)
    assert "Deploy" not in text and not browser.count('[data-testid="stAppDeployButton"]'), page
    assert not browser.count('[data-testid="stMainMenu"]'), page
    if root is not None:
        sidebar = browser.evaluate("document.querySelector('[data-testid=\"stSidebar\"]').innerText")
        assert f"root: {root.name}" in sidebar, sidebar
        assert str(root.parent) not in text and str(root.parent) not in browser.evaluate(
            "document.documentElement.outerHTML"), page  # no server path, shown or hidden
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
            text = visit(browser, url, page, texts, tmp_path, root)
        # Uploads are capped as the API's (10 MB), not Streamlit's 200 MB: the widget says so, and a
        # larger photo is refused before anything reaches the model.
        assert re.search(r"\b10\s?MB per file", text) and "200MB" not in text and "200 MB" not in text, text
        big = tmp_path / "big.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (2100, 2100, 3), dtype=np.uint8)).save(big)
        assert big.stat().st_size > 10 * 1024 * 1024
        browser.upload('input[type="file"]', big)
        text = browser.wait_for(["or smaller"], timeout=60)
        assert re.search(r"File must be 10(\.0)?\s?MB or smaller", text), text
        assert "Face 1:" not in text
        browser.open(f"{url}/?page=Try%20it", ["A photo with people"])
        browser.upload('input[type="file"]', TWO_FACES)
        text = browser.wait_for(["Face 1:", "Face 2:", "numbered as below"], timeout=300)
        assert "Face 2:" in text and "Traceback" not in text, text
        browser.screenshot(tmp_path / "Try_it_faces.png")
        photo_view_shows_both_teachers(browser, url, root, tmp_path)


def scores_text(values) -> list[str]:
    """Seven scores as the photo view writes them (two decimals), computed here from the faces table."""
    return [f"{v:.2f}" for v in values]


def photo_view_shows_both_teachers(browser: Browser, url: str, root: Path, shots: Path) -> None:
    """The Dataset page's view of one photo (``?photo=``) shows, for every face, DeepFace's and the
    mini-Xception's seven scores side by side and their mean, as annotate stored them, and what each
    teacher and the teacher setting (mean, the default) label it."""
    from urllib.parse import quote

    from emotion_pipeline.core import catalog
    from emotion_pipeline.core.config import EMOTIONS
    from emotion_pipeline.core.storage import open_storage

    storage = open_storage(str(root))
    data = catalog.read_dataset(storage)
    faces = catalog.read_faces(storage, data["shard"].unique())
    per_photo = faces.groupby("image_id").size()
    photo = data[(data["status"] == "ok") & data["image_id"].map(per_photo).ge(2)].iloc[0]
    shown = faces[faces["image_id"] == photo["image_id"]].sort_values("face_index")
    text = browser.open(f"{url}/?page=Dataset&photo={quote(photo['source_key'])}",
                        ["One photo: every face, both teachers", f"Face {len(shown)}:"])
    assert f"Face {len(shown)}:" in text and "Traceback" not in text, text
    assert "the mini-Xception says" in text, text
    # mean is the default; another teacher is named beside it only where it labels every photo alike
    assert re.search(r"the teacher setting \([^)]*their mean\) labels it", text), text
    deadline = time.monotonic() + 120  # a table's component loads after the text (a skeleton till then)
    while browser.count('[data-testid="stTable"] table') < len(shown) and time.monotonic() < deadline:
        time.sleep(1)
    tables = browser.evaluate(
        "Array.from(document.querySelectorAll('[data-testid=\"stTable\"] table')).map(t => Array.from(t.rows)"
        ".map(r => Array.from(r.cells).map(c => c.innerText.trim())))")
    assert len(tables) == len(shown), tables
    for table, (_, face) in zip(tables, shown.iterrows()):
        deepface = scores_text(face[[f"emotion_{e}" for e in EMOTIONS]].astype(float))
        xception = scores_text(face[[f"xception_{e}" for e in EMOTIONS]].astype(float))
        assert deepface != xception  # two networks: the view cannot pass by showing one twice
        mean = scores_text((face[[f"emotion_{e}" for e in EMOTIONS]].to_numpy(float)
                            + face[[f"xception_{e}" for e in EMOTIONS]].to_numpy(float)) / 2)
        assert table[0][1:] == ["DeepFace", "mini-Xception", "mean"], table[0]
        assert table[1:] == [[e, d, x, m] for e, d, x, m in zip(EMOTIONS, deepface, xception, mean)], table
    browser.screenshot(shots / "Dataset_photo.png")


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
            visit(browser, url, page, texts, tmp_path, untrained_root)
    assert not (untrained_root / catalog.MLFLOW_FOLDER).exists()  # a read-only view creates no store
    assert not list(untrained_root.rglob(catalog.MLFLOW_DB))
