"""Two teachers in the stages: annotate stores both networks' scores and each choice's label, merge
labels by the ``teacher`` knob (switching it re-runs merge, never resize or detection), and a missing
or altered weights file stops the run at discover, before anything is written."""

import numpy as np
import pandas as pd
import pytest

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import CLASSES, EMOTIONS, PipelineConfig
from emotion_pipeline.core.registry import STAGES
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.labelling import teachers
from emotion_pipeline.labelling.faces import MissingWeightsError
from emotion_pipeline.labelling.labels import label_of
from emotion_pipeline.reporting import report
from tests.conftest import FACES, copy_photos

UPSTREAM = ("resize", "annotate", "dedupe")


def files_under(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_a_damaged_weights_file_fails_discover_naming_it_and_leaves_nothing(tmp_path, monkeypatch, damage):
    copy = tmp_path / "emotion_model.hdf5"
    data = bytearray(teachers.check_weights().read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF  # one byte: the same size, another hash
    copy.write_bytes(bytes(data))
    monkeypatch.setenv(teachers.WEIGHTS_ENV, str(copy))
    copy_photos(FACES, tmp_path / "src", ["img1.jpg"])
    config = PipelineConfig(source=str(tmp_path / "src"), root=str(tmp_path / "out"))

    with pytest.raises(MissingWeightsError) as raised:
        run_stage("discover", config)
    message = str(raised.value)
    assert str(copy) in message and "fer" in message and "teacher=deepface" in message
    # No manifest, no shard, no table: nothing but the lease discover held while it failed.
    assert [f for f in files_under(tmp_path / "out") if not f.startswith("locks/")] == []

    deepface_only = PipelineConfig(source=str(tmp_path / "src"), root=str(tmp_path / "out"), teacher="deepface")
    assert run_stage("discover", deepface_only).images == 1  # the way round it the message names


def test_switching_the_teacher_reruns_merge_onward_only(tmp_path):
    copy_photos(FACES, tmp_path / "src", ["couple.jpg", "img1.jpg", "img10.jpg"])
    config = PipelineConfig(source=str(tmp_path / "src"), root=str(tmp_path / "out"))
    assert config.teacher == "mean"
    run_stage("discover", config)
    for name in UPSTREAM:
        run_stage(name, config, 0 if STAGES[name].per_shard else None)
    assert run_stage("merge", config).skipped is False
    root = open_storage(config.root)
    markers = upstream_markers(root)
    check_both_teachers_scored(root)

    labels = {}
    for teacher in ("deepface", "mini_xception", "mean"):
        switched = PipelineConfig(source=config.source, root=config.root, teacher=teacher)
        for name in UPSTREAM:  # no resize, no detection, no scoring again
            assert run_stage(name, switched, 0 if STAGES[name].per_shard else None).skipped is True, name
        assert run_stage("merge", switched).skipped is False, teacher  # the knob is merge's
        assert run_stage("merge", switched).skipped is True, teacher
        labels[teacher] = catalog.read_dataset(root).set_index("source_key")["label"]
    assert upstream_markers(root) == markers  # their done markers were not rewritten

    # Each label recomputed here from the label face's stored scores with the one rule.
    photos = pd.read_parquet(root.uri_for("annotations/shard=00000/annotations.parquet")).set_index("source_key")
    for key, row in photos.iterrows():
        deepface = np.array([row[f"emotion_{e}"] for e in EMOTIONS], dtype=float)
        xception = np.array([row[f"xception_{e}"] for e in EMOTIONS], dtype=float)
        expected = {"deepface": deepface, "mini_xception": xception, "mean": (deepface + xception) / 2}
        for teacher, scores in expected.items():
            want = label_of(scores, min_margin=config.min_emotion_margin) if row["status"] == "ok" else None
            got = labels[teacher][key]
            assert (None if pd.isna(got) else got) == want, (key, teacher)
    assert labels["deepface"].notna().any()
    check_the_teachers_table(catalog.read_dataset(root))

    # Drift reads the chosen teacher's labels too: each teacher's are checked and logged once.
    for teacher in ("deepface", "mini_xception", "mini_xception"):
        run_stage("check_drift", PipelineConfig(source=config.source, root=config.root, teacher=teacher))
    logged = catalog.read_monitor_log(root)
    for teacher in ("deepface", "mini_xception"):
        row = logged[logged["annotations_fingerprint"].str.endswith(f":{teacher}")]
        assert len(row) == 1 and int(row["labelled"].iloc[0]) == int(labels[teacher].isin(CLASSES).sum())


def check_the_teachers_table(dataset: pd.DataFrame) -> None:
    """The report's teachers table, each figure recomputed here from the dataset's label columns."""
    from sklearn.metrics import cohen_kappa_score

    ok = dataset[dataset["status"] == "ok"]
    captions = pd.Series(["happy"] * len(ok), index=ok["image_id"]).iloc[: max(1, len(ok) - 1)]
    table = teachers.teachers_table(dataset, captions)
    for teacher in ("deepface", "mini_xception", "mean"):
        labels = ok[f"label_{teacher}"].fillna("no label")
        entry = table["teachers"][teacher]
        assert entry["n"] == len(ok) and sum(entry["label_mix"].values()) == len(ok)
        assert entry["label_mix"] == {c: int((labels == c).sum()) for c in (*CLASSES, "no label")}
        judged = ok[ok["image_id"].isin(captions.index)]
        agree = int((judged[f"label_{teacher}"] == "happy").sum())
        assert entry["captions"] == {"n": len(judged), "agree": agree, "agreement": agree / len(judged)}
    first, second = (ok[f"label_{t}"].fillna("no label") for t in ("deepface", "mini_xception"))
    assert table["between"]["n"] == len(ok)
    assert table["between"]["same_label"] == pytest.approx((first == second).mean())
    expected = 1.0 if len(set(first) | set(second)) == 1 else cohen_kappa_score(first, second)
    assert table["between"]["kappa"] == pytest.approx(expected)
    page = report.teachers_section(table, "mean")
    assert "mean of the two (the labels)" in page and f"{len(ok)}" in page and "Cohen's kappa" in page


def upstream_markers(root) -> dict[str, bytes]:
    return {name: root.read_bytes(catalog.done_marker(STAGES[name].folder, 0 if STAGES[name].per_shard else None))
            for name in UPSTREAM}


def check_both_teachers_scored(root) -> None:
    """Every face row carries both teachers' seven scores (each a distribution), each choice's label
    and whether the two networks agree."""
    faces = pd.read_parquet(root.uri_for("annotations/shard=00000/faces.parquet"))
    assert len(faces) >= 2
    for prefix in ("emotion_", "xception_"):
        scores = faces[[f"{prefix}{e}" for e in EMOTIONS]].to_numpy(dtype=float)
        assert np.isfinite(scores).all() and np.allclose(scores.sum(axis=1), 100)
    assert not np.allclose(faces[[f"emotion_{e}" for e in EMOTIONS]].to_numpy(dtype=float),
                           faces[[f"xception_{e}" for e in EMOTIONS]].to_numpy(dtype=float))  # two networks
    for _, face in faces.iterrows():
        deepface_label = face["label_deepface"] if isinstance(face["label_deepface"], str) else None
        xception_label = face["label_mini_xception"] if isinstance(face["label_mini_xception"], str) else None
        if face["eligible"]:
            assert bool(face["teachers_agree"]) == (deepface_label == xception_label)
        else:
            assert deepface_label is None and xception_label is None


@pytest.mark.integration
def test_the_teachers_table_is_in_the_report_and_metrics_of_a_run(trained_root):
    """trained_root ran the whole pipeline with the shared captions: the table, recomputed here."""
    import json

    from tests.labelling.test_captions import independent_caption_labels

    config, results = trained_root
    root = open_storage(config.root)
    version = results["train"].model_version
    metrics = json.loads(root.read_bytes(catalog.report_file(version, catalog.REPORT_METRICS)))
    assert metrics["teacher"] == config.teacher == "mean"
    table = metrics["teachers"]
    dataset = catalog.read_dataset(root)
    ok = dataset[dataset["status"] == "ok"]
    expected = independent_caption_labels(config.caption_min_agree)
    captioned = ok.assign(caption=ok["source_key"].str.rsplit("/", n=1).str[-1].map(expected))
    captioned = captioned[captioned["caption"].notna()]
    assert len(ok) >= 10 and len(captioned) >= 1
    for teacher in ("deepface", "mini_xception", "mean"):
        entry = table["teachers"][teacher]
        labels = ok[f"label_{teacher}"].fillna("no label")
        assert entry["n"] == len(ok)
        assert entry["label_mix"] == {c: int((labels == c).sum()) for c in (*CLASSES, "no label")}
        agree = int((captioned[f"label_{teacher}"] == captioned["caption"]).sum())
        assert (entry["captions"]["n"], entry["captions"]["agree"]) == (len(captioned), agree)
    assert (ok["label"].fillna("-") == ok["label_mean"].fillna("-")).all()  # the dataset's labels: the mean's
    from sklearn.metrics import cohen_kappa_score

    first, second = (ok[f"label_{t}"].fillna("no label") for t in ("deepface", "mini_xception"))
    assert table["between"]["n"] == len(ok)
    assert table["between"]["kappa"] == pytest.approx(cohen_kappa_score(first, second))
    assert table["between"]["same_label"] == pytest.approx((first == second).mean())
    page = root.read_bytes(catalog.report_file(version, catalog.REPORT_PAGE)).decode()
    assert "Teachers: DeepFace and the mini-Xception" in page and "mean of the two (the labels)" in page
    assert f"{table['between']['kappa']:.3f}" in page


@pytest.mark.integration
def test_the_label_policy_curves_are_drawn_per_teacher_in_a_run(trained_root):
    """At the run's own settings each teacher's curve keeps exactly the photos its label column labels,
    and agrees with the captions on those as the dataset says (DeepFace's curves stay ``label_policy``)."""
    import json

    from tests.labelling.test_captions import independent_caption_labels

    config, results = trained_root
    root = open_storage(config.root)
    version = results["train"].model_version
    metrics = json.loads(root.read_bytes(catalog.report_file(version, catalog.REPORT_METRICS)))
    by_teacher = metrics["label_policy_by_teacher"]
    assert set(by_teacher) == {"deepface", "mini_xception", "mean"}
    assert by_teacher["deepface"] == metrics["label_policy"]
    dataset = catalog.read_dataset(root)
    annotated = dataset[dataset["status"].isin(["ok", "no_face"])]
    expected = independent_caption_labels(config.caption_min_agree)
    captions = annotated["source_key"].str.rsplit("/", n=1).str[-1].map(expected)
    for teacher, curves in by_teacher.items():
        point = next(p for p in curves["min_emotion_margin"] if p["value"] == config.min_emotion_margin)
        labels = annotated[f"label_{teacher}"]
        assert point["labelled"] == int(labels.notna().sum()), teacher
        judged = labels.notna() & captions.notna()
        assert point["caption_n"] == int(judged.sum()), teacher
        assert point["caption_agreement"] == pytest.approx((labels[judged] == captions[judged]).mean()), teacher
    assert by_teacher["deepface"] != by_teacher["mini_xception"]  # two networks, two sets of curves
    page = root.read_bytes(catalog.report_file(version, catalog.REPORT_PAGE)).decode()
    assert "alt='label_policy'" in page
