"""People's labels win: merge applies the recorded decisions (``labelling/reviews.py``), the training
rows carry the person's label, "no usable face" keeps the photo out of training, and a decision
makes training's input change (a refit). Runs on a copy of trained_root's outputs."""
import dataclasses
import os
import shutil

import pandas as pd

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES
from emotion_pipeline.core.manifest import load_manifest
from emotion_pipeline.core.registry import STAGES
from emotion_pipeline.core.runner import is_complete, run_stage
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.labelling import reviews
from emotion_pipeline.modeling.data import gold_ids, load_training_data


def test_a_persons_label_is_what_trains_and_no_usable_face_leaves_training(trained_root, tmp_path):
    trained, _ = trained_root
    shutil.copytree(trained.root, tmp_path / "out", ignore=shutil.ignore_patterns(catalog.MLFLOW_FOLDER))
    config = dataclasses.replace(trained, root=str(tmp_path / "out"))
    root = open_storage(config.root)
    assert is_complete(STAGES["train"], config, root, load_manifest(root))  # the fixture's model is up to date
    before = load_training_data(root, config.min_rows_per_class, gold_ids(root)).frame.set_index("image_id")
    dataset = catalog.read_dataset(root).set_index("image_id")
    relabelled, faceless = before.index[0], before.index[1]
    machine = before.loc[relabelled, "label"]
    # A class with enough photos to train, other than the machine's label.
    person = next(c for c in before["label"].value_counts().index if c != machine)
    assert person in CLASSES
    face = int(dataset.loc[relabelled, "label_face_index"])
    reviews.record_decision(root, reviews.decide(relabelled, relabelled, face, person, "ada"))
    reviews.record_decision(root, reviews.decide(faceless, faceless, int(dataset.loc[faceless, "label_face_index"]),
                                                 reviews.NO_FACE, "grace"))

    result = run_stage("merge", config)
    assert result.skipped is False and result.reviewed == 2
    merged = catalog.read_dataset(root).set_index("image_id")
    assert merged.loc[relabelled, ["label", "label_source", "machine_label"]].tolist() == [person, "person", machine]
    assert merged.loc[faceless, ["status", "label_source"]].tolist() == ["no_face", "person"]
    assert pd.isna(merged.loc[faceless, "label"])
    others = merged.drop(index=[relabelled, faceless])
    assert set(others["label_source"].dropna()) == {config.teacher}  # the teacher's labels elsewhere
    assert (others["label"].fillna("-") == others["machine_label"].fillna("-")).all()

    after = load_training_data(root, config.min_rows_per_class, gold_ids(root)).frame.set_index("image_id")
    assert after.loc[relabelled, "label"] == person
    assert faceless not in after.index
    assert after.drop(index=relabelled)["label"].equals(before.drop(index=[relabelled, faceless])["label"])
    # Training's input changed: the next run refits.
    assert not is_complete(STAGES["train"], config, root, load_manifest(root))

    # The same decision again (another time, another reviewer) changes nothing merge reads: no work.
    reviews.record_decision(root, reviews.decide(relabelled, relabelled, face, person, "linus"))
    assert run_stage("merge", config).skipped is True


def test_a_decision_clicked_on_the_review_page_is_what_the_next_run_trains_on(trained_root, tmp_path, monkeypatch):
    """The whole loop in a real headless Chromium: the queue trained_root's run made, the photo it asks
    first, a person's click on another class, and the next run's dataset and training rows carry it."""
    from emotion_pipeline.serve import review_page
    from tests.conftest import REPO
    from tests.serve.test_dashboard import dashboard_in_browser

    trained, _ = trained_root
    shutil.copytree(trained.root, tmp_path / "out", ignore=shutil.ignore_patterns(catalog.MLFLOW_FOLDER))
    config = dataclasses.replace(trained, root=str(tmp_path / "out"))
    root = open_storage(config.root)
    first = review_page.next_item(review_page.read_queue(root), set(), set())
    asked = first["image_id"]
    before = load_training_data(root, config.min_rows_per_class, gold_ids(root)).frame.set_index("image_id")
    assert asked in before.index, "the queue asks first about a photo that trains"
    person = next(c for c in before["label"].value_counts().index if c != first["machine_label"])
    source_key = catalog.read_dataset(root).set_index("image_id").loc[asked, "source_key"]

    monkeypatch.setenv("USER", "ada")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with dashboard_in_browser(tmp_path / "out", tmp_path / "chromium") as (browser, url):
        button = review_page.BUTTON_TEXT[person]
        text = browser.open(f"{url}/?page=Review", ["0 reviewed of", source_key, button])
        assert "Traceback" not in text and button in text, text
        assert browser.evaluate(f"""(() => {{ const b = [...document.querySelectorAll('button')]
            .find((b) => b.innerText.trim() === {button!r}); b.click(); return true; }})()""")
        browser.wait_for(["1 reviewed of"])

    assert run_stage("merge", config).reviewed == 1
    merged = catalog.read_dataset(root).set_index("image_id")
    assert merged.loc[asked, ["label", "label_source"]].tolist() == [person, "person"]
    after = load_training_data(root, config.min_rows_per_class, gold_ids(root)).frame.set_index("image_id")
    assert after.loc[asked, "label"] == person
    assert not is_complete(STAGES["train"], config, root, load_manifest(root))  # the next run trains on it
