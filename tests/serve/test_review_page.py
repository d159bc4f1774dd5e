"""The dashboard's Review page on a small root made by hand (three real Flickr30k photos, a queue
and a dataset as the pipeline writes them): with Streamlit's AppTest and in a real headless Chromium,
a click and a key record a decision, the page moves on, and the progress counts it."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import EMOTIONS
from emotion_pipeline.core.storage import LocalStorage
from emotion_pipeline.core.tables import write_table
from emotion_pipeline.labelling.reviews import Decision, read_decisions, record_decision
from emotion_pipeline.serve import review_page
from tests.conftest import FLICKR, REPO, SHARED
from tests.serve.test_dashboard import SCRIPT, dashboard_in_browser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
PHOTOS = ["1000092795.jpg", "10010052.jpg", "1001573224.jpg"]
CAPTIONS = SHARED / "data" / "flickr30k_sample" / "captions.csv"


@pytest.fixture
def review_root(tmp_path):
    """A root with a three-photo queue (box as a parquet struct, as the review_queue stage writes it)
    and the dataset rows it points at; the photos are the source's."""
    source, root = tmp_path / "photos", tmp_path / "out"
    source.mkdir()
    rows, queue = [], []
    for i, name in enumerate(PHOTOS):
        shutil.copy(FLICKR / name, source / name)
        scores = np.roll([2.0, 1.0, 1.0, 80.0, 10.0, 1.0, 5.0], i)  # a different dominant emotion each
        rows.append({"image_id": f"id{i}", "source_key": name, "source_uri": str(source / name), "shard": 0,
                     "status": "ok", "label": "happy", "label_face_index": 0,
                     **dict(zip(("upright_width", "upright_height"), map(float, Image.open(FLICKR / name).size))),
                     **{f"emotion_{e}": float(s) for e, s in zip(EMOTIONS, scores)}})
        queue.append({"image_id": f"id{i}", "content_id": f"content{i}", "face_index": 0,
                      "box": {"x": 100 + 10 * i, "y": 50, "w": 80, "h": 90}, "machine_label": "happy",
                      "suggested_label": "sad", "score": 0.9 - 0.1 * i, "reasons": "out-of-fold model disagrees"})
    storage = LocalStorage(root)
    write_table(storage, catalog.DATASET, pd.DataFrame(rows))
    write_table(storage, catalog.REVIEW_QUEUE, pd.DataFrame(queue))
    return root


def test_the_queue_order_and_what_counts_as_decided(review_root):
    root = LocalStorage(review_root)
    queue = review_page.read_queue(root)
    assert queue[review_page.BOX_COLUMNS].iloc[1].tolist() == [110, 50, 80, 90]
    assert review_page.next_item(queue, set(), set())["image_id"] == "id0"
    record_decision(root, Decision("id0", "content0", 0, "sad", "ann", "2026-12-05T08:00:00+00:00"))
    # A decision on an older version of id1 (another content id) does not count: id1 is asked again.
    record_decision(root, Decision("id1", "old-content", 0, "sad", "ann", "2026-12-05T08:00:00+00:00"))
    done = review_page.decided_keys(root)
    assert review_page.progress(queue, done) == (1, 3)
    assert review_page.next_item(queue, done, set())["image_id"] == "id1"
    assert review_page.next_item(queue, done, {("id1", "content1", 0)})["image_id"] == "id2"
    assert review_page._box_values([1, 2, 3, 4]) == [1, 2, 3, 4] and review_page._box_values(None) is None


def test_the_face_box_and_the_scores_of_the_queued_face(review_root):
    root = LocalStorage(review_root)
    queue = review_page.read_queue(root)
    data = pd.read_parquet(review_root / f"{catalog.DATASET}.parquet")
    row = review_page.dataset_row(data, "id0")
    photo, box = review_page.review_photo(root, queue.iloc[0], row)
    assert photo.size == Image.open(FLICKR / PHOTOS[0]).size  # the source photo, in its own frame
    assert box == (100.0, 50.0, 80.0, 90.0)
    scores = review_page.face_scores(root, queue.iloc[0], row)
    assert scores.idxmax() == "happy" and scores["happy"] == 80.0 and list(scores.index) == list(EMOTIONS)


def test_review_page_with_apptest(review_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("EMOTION_PIPELINE_ROOT", str(review_root))
    monkeypatch.setenv("USER", "tester")
    app = AppTest.from_file(str(SCRIPT), default_timeout=120)
    app.query_params["page"] = "Review"
    app.run()
    assert not app.exception and not app.error and app.header[0].value == "Review"
    assert len(app.button) == 7
    app.button(key="review-angry").click().run()
    assert not app.exception
    decisions = read_decisions(LocalStorage(review_root))
    assert decisions[["image_id", "content_id", "label", "reviewer"]].values.tolist() == [
        ["id0", "content0", "angry", "tester"]]
    assert "1 reviewed of 3 queued" in app.get("progress")[0].proto.text
    app.button(key="review-skip").click().run()  # id1 skipped: the next click is about id2
    app.button(key="review-happy").click().run()
    decisions = read_decisions(LocalStorage(review_root))
    assert decisions[["image_id", "label"]].values.tolist() == [["id0", "angry"], ["id2", "happy"]]
    assert "2 reviewed of 3 queued" in app.get("progress")[0].proto.text
    assert any("Nothing left to ask" in s.value for s in app.success)


def test_an_empty_queue_says_which_command_makes_it(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("EMOTION_PIPELINE_ROOT", str(tmp_path))
    app = AppTest.from_file(str(SCRIPT), default_timeout=60)
    app.query_params["page"] = "Review"
    app.run()
    assert not app.exception
    assert "review queue" in app.info[0].value and "emotion-pipeline stage review_queue" in app.info[0].value
    assert not (tmp_path / "reviews").exists()  # nothing written by looking


def press(browser, key: str) -> None:
    """A real key press on the page (DevTools Input events, as a keyboard sends them)."""
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", type=kind, key=key, text=key if kind == "keyDown" else "",
                     code=f"Key{key.upper()}" if key.isalpha() else f"Digit{key}")


def test_review_in_a_real_browser(review_root, tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "tester")
    monkeypatch.setenv(review_page.CAPTIONS_ENV, str(CAPTIONS))
    # The dashboard process imports this checkout's package (the venv's may be installed from another).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with dashboard_in_browser(review_root, tmp_path / "chromium") as (browser, url):
        text = browser.open(f"{url}/?page=Review", ["0 reviewed of 3 queued", PHOTOS[0], "happy (1)"])
        assert "Traceback" not in text and PHOTOS[0] in text, text
        assert "happy 80.0" in text and "Two young guys with shaggy hair" in text  # scores and captions
        browser.screenshot(tmp_path / "review.png")
        assert browser.evaluate("""(() => { const b = [...document.querySelectorAll('button')]
            .find((b) => b.innerText.trim() === 'sad (2)'); b.click(); return true; })()""")
        text = browser.wait_for(["1 reviewed of 3 queued", PHOTOS[1]])
        assert "1 reviewed of 3 queued" in text and PHOTOS[1] in text and PHOTOS[0] not in text, text
        decisions = read_decisions(LocalStorage(review_root))
        assert decisions[["image_id", "label", "reviewer"]].values.tolist() == [["id0", "sad", "tester"]]
        assert len(list((review_root / catalog.REVIEW_DECISIONS).glob("*.json"))) == 1
        browser.evaluate("document.activeElement && document.activeElement.blur()")
        press(browser, "0")  # "no usable face", by its key
        text = browser.wait_for(["2 reviewed of 3 queued", PHOTOS[2]], timeout=60)
        assert "2 reviewed of 3 queued" in text and PHOTOS[2] in text, text
        assert read_decisions(LocalStorage(review_root)).set_index("image_id").loc["id1", "label"] == "no_face"
        press(browser, "s")  # skip: nothing recorded, nothing left to ask this session
        text = browser.wait_for(["Nothing left to ask"], timeout=60)
        assert "2 of 3 reviewed, 1 skipped" in text, text
    assert len(read_decisions(LocalStorage(review_root))) == 2
