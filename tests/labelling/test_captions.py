"""The caption check: captions files, the lexicon, caption labels, matching, and the figures in a run."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.labelling import captions
from emotion_pipeline.modeling import tracking
from tests.conftest import SHARED

FLICKR_CAPTIONS = SHARED / "data" / "flickr30k_sample" / "captions.csv"


def test_flickr30k_captions_keep_commas_inside_comments(tmp_path):
    table = captions.read_captions(str(FLICKR_CAPTIONS))
    assert len(table) == 2000 and table["photo"].nunique() == 400 and (table["by"] == "name").all()
    assert (table.groupby("photo").size() == 5).all()  # a comma inside a comment does not split it
    piped = tmp_path / "results.csv"
    piped.write_text("image_name| comment_number| comment\n1.jpg| 0| Two girls, smiling , wave .\n"
                     "1.jpg| 1| A girl laughs .\n")
    assert captions.read_captions(str(piped))["caption"].tolist() == ["Two girls, smiling , wave .", "A girl laughs ."]


def test_a_generic_csv_names_photos_by_path_or_image_id(tmp_path):
    (tmp_path / "by_path.csv").write_text('path,caption\n./batch1\\a.jpg,"a man, crying"\nb.jpg,hello\n'
                                          '.hidden/c.jpg,a smile\n')
    table = captions.read_captions(str(tmp_path / "by_path.csv"))
    assert table["photo"].tolist() == ["batch1/a.jpg", "b.jpg", ".hidden/c.jpg"] and (table["by"] == "path").all()
    (tmp_path / "by_id.csv").write_text("image_id,caption\nabc123,a smile\n")
    assert captions.read_captions(str(tmp_path / "by_id.csv"))["by"].tolist() == ["image_id"]
    (tmp_path / "bad.csv").write_text("file,text\na.jpg,hi\n")
    with pytest.raises(captions.CaptionError, match="'caption' column"):
        captions.read_captions(str(tmp_path / "bad.csv"))


def test_the_lexicon_matches_whole_words_and_not_after_a_negation(tmp_path):
    lexicon = captions.read_lexicon()
    named = lambda text: captions.emotions_named(text, lexicon)  # noqa: E731
    assert named("Two girls smiling at the camera") == {"happy"}
    assert named("People enjoying a concert") == set()  # 'joy' inside a word is not a match
    assert named("A boy is not smiling") == set() and named("a child without a smile") == set()
    assert named("A crying baby and a laughing mother") == {"sad", "happy"}
    assert named("A SURPRISED man") == {"surprise"}
    (tmp_path / "lexicon.csv").write_text("emotion,pattern\nfear,scared\n")
    with pytest.raises(captions.CaptionError, match="'fear' is not one of"):
        captions.read_lexicon(str(tmp_path / "lexicon.csv"))
    (tmp_path / "lexicon.csv").write_text("emotion,pattern\nhappy,smil(e\n")
    with pytest.raises(captions.CaptionError, match="pattern"):
        captions.read_lexicon(str(tmp_path / "lexicon.csv"))


def test_a_caption_label_needs_enough_captions_and_no_tie():
    rows = [("a.jpg", "She is smiling"), ("a.jpg", "A smiling woman"), ("a.jpg", "A woman"),
            ("b.jpg", "He smiles"), ("b.jpg", "A man"),
            ("c.jpg", "A smiling girl"), ("c.jpg", "A girl smiles"), ("c.jpg", "A girl cries"), ("c.jpg", "crying")]
    table = pd.DataFrame(rows, columns=["photo", "caption"]).assign(by="name")
    labels = captions.caption_labels(table, captions.read_lexicon(), min_agree=2).set_index("photo")
    assert labels.loc["a.jpg", "caption_label"] == "happy" and labels.loc["a.jpg", "votes_happy"] == 2
    assert labels.loc["a.jpg", "captions"] == 3
    assert pd.isna(labels.loc["b.jpg", "caption_label"])  # one caption of two: not enough
    assert pd.isna(labels.loc["c.jpg", "caption_label"]) and labels.loc["c.jpg", "conflict"]  # 2 happy, 2 sad
    one = captions.caption_labels(table, captions.read_lexicon(), min_agree=1).set_index("photo")
    assert one.loc["b.jpg", "caption_label"] == "happy"


def test_photos_match_by_file_name_path_or_content_id():
    dataset = pd.DataFrame({"source_key": ["batch1/a.jpg", "b.jpg", "c.jpg", "old.jpg"],
                            "image_id": ["ia", "ib", "ic", "io"], "status": ["ok", "ok", "no_face", "removed"],
                            "label": ["happy", None, None, "sad"]})
    labels = pd.DataFrame({"photo": ["a.jpg", "b.jpg", "ic", "old.jpg"], "by": ["name", "path", "image_id", "name"],
                           "captions": 5, "caption_label": ["happy", "sad", "happy", "sad"], "conflict": False})
    matched = captions.match_photos(labels, dataset).set_index("source_key")
    assert sorted(matched.index) == ["b.jpg", "batch1/a.jpg", "c.jpg"]  # a removed photo is not checked
    check = captions.caption_check(matched.reset_index(), np.array([0, 1]), trained_on={"ia"}, min_agree=2)
    assert check["covered"] == 3 and check["no_face"] == 1 and check["with_face"] == 2
    assert check["deepface"]["accuracy"] == 0.5  # a: happy = happy; b: no label, a miss
    assert check["per_class"]["sad"]["deepface_no_label"] == 1
    assert check["model"]["accuracy"] == 1.0 and check["model_held_out"]["n"] == 1


def independent_caption_labels(min_agree: int) -> dict[str, str]:
    """Caption labels recomputed without captions.py: the lexicon's patterns searched caption by caption."""
    patterns = {}
    for line in captions.DEFAULT_LEXICON.read_text().splitlines():
        if line and not line.startswith("#") and line != "emotion,pattern":
            emotion, pattern = line.split(",", 1)
            patterns.setdefault(emotion, []).append(pattern)
    votes: dict[str, dict[str, int]] = {}
    for line in FLICKR_CAPTIONS.read_text().splitlines()[1:]:
        name, _, comment = line.split(",", 2)
        for emotion, ps in patterns.items():
            hit = any(re.search(rf"(?<!not )(?<!no )(?<!without )(?<!without a )\b(?:{p})\b", comment, re.I)
                      for p in ps)
            votes.setdefault(name, {}).setdefault(emotion, 0)
            votes[name][emotion] += hit
    labels = {}
    for name, counts in votes.items():
        best = max(counts.values())
        winners = [e for e, n in counts.items() if n == best]
        if best >= min_agree and len(winners) == 1:
            labels[name] = winners[0]
    return labels


@pytest.mark.integration
def test_the_caption_check_is_in_the_report_metrics_and_mlflow(trained_root, monkeypatch):
    """trained_root ran with the shared captions (min_agree 1): the figures, recomputed here."""
    import mlflow

    config, results = trained_root
    root = open_storage(config.root)
    version = results["train"].model_version
    check = json.loads(root.read_bytes(catalog.report_file(version, catalog.REPORT_METRICS)))["captions"]
    expected = independent_caption_labels(config.caption_min_agree)
    dataset = catalog.read_dataset(root)
    dataset = dataset[dataset["status"] != "removed"].assign(
        name=lambda d: d["source_key"].str.rsplit("/", n=1).str[-1])
    captioned = dataset[dataset["name"].isin({line.split(",", 1)[0] for line in
                                              FLICKR_CAPTIONS.read_text().splitlines()[1:]})]
    covered = captioned[captioned["name"].isin(expected)].assign(caption=lambda d: d["name"].map(expected))
    with_face = covered[covered["status"] == "ok"]
    assert check["photos"] == len(captioned) and check["covered"] == len(covered) >= 3
    assert check["with_face"] == len(with_face) and check["no_face"] == int((covered["status"] == "no_face").sum())
    agree = (with_face["label"] == with_face["caption"]).mean() if len(with_face) else 0.0
    assert check["deepface"]["accuracy"] == pytest.approx(agree)
    for c in CLASSES:
        assert check["per_class"][c]["covered"] == int((covered["caption"] == c).sum())
        assert check["per_class"][c]["deepface_no_label"] == int(((with_face["caption"] == c)
                                                                  & with_face["label"].isna()).sum())
    assert np.array(check["deepface"]["confusion_matrix"]).sum() == len(with_face)
    assert np.array(check["model"]["confusion_matrix"]).sum() == len(with_face)

    page = root.read_bytes(catalog.report_file(version, catalog.REPORT_PAGE)).decode()
    assert "Caption check" in page and "weak labels" in page and "caption_confusion_deepface" in page
    if (with_face["label"] != with_face["caption"]).any():
        assert "caption_disagreements" in page

    run = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(config)).get_run(results["train"].run_id)
    assert run.data.metrics["captions.deepface.agreement"] == pytest.approx(check["deepface"]["accuracy"])
    assert run.data.metrics["captions.covered"] == check["covered"]

    # The model and the soft-label head (soft_labels=True), each recomputed from its own MLflow copy.
    vectors, index = catalog.read_features(root)
    rows = with_face[["image_id"]].merge(index.drop_duplicates("image_id"), how="left")["row"].to_numpy()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.tracking_uri(config))  # undone after the test
    mlflow.set_tracking_uri(tracking.tracking_uri(config))  # (it also exports MLFLOW_TRACKING_URI)
    for who, uri in (("model", results["train"].model_uri), ("model_soft", results["train"].soft_model_uri)):
        head = mlflow.keras.load_model(uri)
        predicted = np.array(CLASSES)[head.predict(vectors[rows], verbose=0).argmax(1)] if len(rows) else []
        assert check[who]["accuracy"] == pytest.approx((predicted == with_face["caption"].to_numpy()).mean()
                                                       if len(rows) else 0.0), who
        assert run.data.metrics[f"captions.{who}.agreement"] == pytest.approx(check[who]["accuracy"])
    assert "soft-label model agrees" in page
    metrics = json.loads(root.read_bytes(catalog.report_file(version, catalog.REPORT_METRICS)))["metrics"]
    assert metrics["soft"]["n"] == metrics["model"]["n"] and "soft.test_macro_f1" in run.data.metrics


def test_no_held_out_captioned_photo_is_zero_not_an_error():
    """Found by the gold test's run: every captioned photo was a training photo, and the held-out
    agreement crashed evaluate (scikit-learn refuses empty arrays)."""
    matched = pd.DataFrame({"source_key": ["a.jpg"], "image_id": ["ia"], "status": ["ok"], "label": ["happy"],
                            "captions": [5], "caption_label": ["happy"], "conflict": [False]})
    check = captions.caption_check(matched, np.array([0]), trained_on={"ia"}, min_agree=1)
    assert check["model_held_out"]["n"] == 0 and check["model_held_out"]["accuracy"] == 0.0
    assert np.array(check["model_held_out"]["confusion_matrix"]).shape == (len(CLASSES), len(CLASSES))
    assert check["model"]["accuracy"] == 1.0


def test_captions_and_a_lexicon_read_from_gcs(gcs_bucket):
    """--captions and --caption-lexicon take gs:// URIs (here: the real client against the emulator)."""
    from emotion_pipeline.core.storage import _gcs_client

    bucket = _gcs_client().bucket(gcs_bucket)
    bucket.blob("meta/results.csv").upload_from_string(FLICKR_CAPTIONS.read_bytes())
    bucket.blob("meta/lexicon.csv").upload_from_string(b"emotion,pattern\nhappy,smil(e|es|ing)\n")
    table = captions.read_captions(f"gs://{gcs_bucket}/meta/results.csv")
    assert len(table) == 2000 and table["photo"].nunique() == 400
    lexicon = captions.read_lexicon(f"gs://{gcs_bucket}/meta/lexicon.csv")
    assert [len(lexicon[c]) for c in CLASSES] == [1, 0, 0, 0, 0]
    assert captions.fingerprint(f"gs://{gcs_bucket}/meta/results.csv", f"gs://{gcs_bucket}/meta/lexicon.csv") != \
        captions.fingerprint(f"gs://{gcs_bucket}/meta/results.csv", None)  # a new lexicon re-evaluates
