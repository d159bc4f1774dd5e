"""Run the real DAG through the real CLI (``emotion-pipeline run``) and check what it wrote."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from emotion_pipeline.config import CLASSES, EMOTIONS
from emotion_pipeline.storage import Storage

CLI = str(Path(sys.executable).parent / "emotion-pipeline")


def smtp_connection(port: int) -> str:
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": {
        "disable_ssl": True, "disable_tls": True, "from_email": "pipeline@example.com", "retry_limit": 0}})


def run_pipeline(source: str, root: str, workdir: Path, *args: str, env: dict | None = None) -> dict:
    summary_path = workdir / f"summary-{len(list(workdir.glob('summary-*')))}.json"
    result = subprocess.run(
        [CLI, "run", "--source", source, "--root", root, "--airflow-home", str(workdir / "airflow"),
         "--summary-json", str(summary_path), *args],
        env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    assert "photos:" in result.stdout and "drifted shards:" in result.stdout  # the printed summary
    return json.loads(summary_path.read_text())


def shard_results(summary: dict, task: str) -> list[dict]:
    """The stage summaries of the shard tasks that ran (a task mapped over nothing has none)."""
    return [t["result"] for t in summary["tasks"] if t["task"] == task and t["result"] is not None]


def read_parquet(storage: Storage, key: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(key)))


def check_outputs(root: Storage, expected_status: dict[str, str], all_files: list[str]) -> pd.DataFrame:
    """Every output of the first half exists, is consistent, and accounts for every input file."""
    dataset = read_parquet(root, "datasets/final_emotion_dataset.parquet")
    csv = pd.read_csv(io.BytesIO(root.read_bytes("datasets/final_emotion_dataset.csv")))
    assert len(csv) == len(dataset)
    assert sorted(dataset["source_key"]) == sorted(all_files)  # discovered == rows, each once
    by_name = dataset.set_index("source_key")
    for name, status in expected_status.items():
        assert by_name.loc[name, "status"] == status, (name, by_name.loc[name, "error"])
        assert by_name.loc[name, "error"], name
    assert set(dataset["status"]) <= {"ok", "no_face", "duplicate", "corrupt", "unsupported", "empty", "too_large"}

    processed = dataset[dataset["status"].isin(["ok", "no_face"])]
    assert len(processed) > 0
    for uri in processed["processed_uri"].head(10):
        key = uri.split("/processed/")[1]
        with Image.open(io.BytesIO(root.read_bytes(f"processed/{key}"))) as image:
            assert image.size == (224, 224) and image.mode == "RGB"

    ok = dataset[dataset["status"] == "ok"]
    assert (dataset[dataset["status"] != "ok"]["label"].isna()).all()  # no face -> never a label
    assert set(ok["label"].dropna()) <= set(CLASSES)
    unlabelled = ok[ok["label"].isna()]
    assert set(unlabelled["dominant_emotion"]) <= {"fear", "disgust"}
    scores = ok[[f"emotion_{e}" for e in EMOTIONS]].to_numpy()
    np.testing.assert_allclose(scores.sum(axis=1), 100.0, rtol=1e-4)
    assert (ok["face_confidence"] >= 0.9).all() and (ok["n_confident_faces"] >= 1).all()
    assert (ok["face_w"] > 0).all() and (ok["face_x"] + ok["face_w"] <= ok["orig_width"] + 1).all()

    for shard in sorted(dataset["shard"].unique()):
        prefix = f"shard={int(shard):05d}"
        for key in (f"metadata/{prefix}/metadata", f"annotations/{prefix}/annotations", f"annotations/{prefix}/faces"):
            assert root.exists(f"{key}.parquet") and root.exists(f"{key}.csv"), key
        faces = read_parquet(root, f"annotations/{prefix}/faces.parquet")
        shard_ok = ok[ok["shard"] == shard]
        assert set(shard_ok["image_id"]) <= set(faces["image_id"])
        assert root.exists(f"monitoring/charts/{prefix}.png")

    monitor_log = pd.read_csv(io.BytesIO(root.read_bytes("monitoring/label_monitor_log.csv")))
    assert sorted(monitor_log["shard"]) == sorted(int(s) for s in dataset["shard"].unique())
    assert root.exists("monitoring/charts/drift_timeline.png")
    return dataset
