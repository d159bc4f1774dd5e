"""Do two versions of the package make the same outputs from the same photos? (a refactor's check)

    python -m bench.compare_versions OLD_REF PHOTOS [--work build/compare] [--knob detector=mtcnn ...]

Checks OLD_REF out into a git worktree, runs ``stages.all.build_dataset_and_features`` (discover to
assemble_features, no training) with each version in a process of its own, on a copy of PHOTOS, with
random ResNet50 weights (``embed_weights=none``: seeded, so both versions draw the same ones), and
prints what differs: files present in one root only, files whose bytes differ, dataset columns
(the old version's, compared value by value; the root path in ``processed_uri`` left out), the
vectors, and each done marker's fingerprint (equal: an existing root's work is kept on upgrade).
``--knob`` values go to both versions (a knob the old version lacks is dropped for it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
RUN = """
import json, sys
from emotion_pipeline.stages.all import build_dataset_and_features
try:
    from emotion_pipeline.core.config import PipelineConfig
except ImportError:  # before the package had folders
    from emotion_pipeline.config import PipelineConfig
settings = json.loads(sys.argv[1])
known = PipelineConfig.__dataclass_fields__
build_dataset_and_features(PipelineConfig(**{k: v for k, v in settings.items() if k in known}))
"""


def run_version(code: Path, photos: Path, root: Path, knobs: dict[str, str], home: Path) -> None:
    settings = {"source": str(photos), "root": str(root), "shard_size": 8, "embed_weights": "none", **knobs}
    env = {**os.environ, "PYTHONPATH": str(code), "EMOTION_PIPELINE_HOME": str(home)}
    subprocess.run([sys.executable, "-c", RUN, json.dumps(settings)], env=env, check=True)


def compare(old: Path, new: Path) -> dict:
    """What differs between two roots made from the same photos."""
    files = {name: {str(p.relative_to(r)) for p in r.rglob("*") if p.is_file()}
             for name, r in (("old", old), ("new", new))}
    both = sorted(files["old"] & files["new"])
    report = {"only_old": sorted(files["old"] - files["new"]), "only_new": sorted(files["new"] - files["old"]),
              "identical_files": sum((old / f).read_bytes() == (new / f).read_bytes() for f in both),
              "differing_files": [f for f in both if (old / f).read_bytes() != (new / f).read_bytes()]}
    report["dataset"] = _dataset_columns(old, new)
    vectors = [np.load(r / "features" / "image_vectors.npy") for r in (old, new)]
    report["vectors_identical"] = vectors[0].shape == vectors[1].shape and bool(np.array_equal(*vectors))
    report["fingerprints"] = {f: json.loads((old / f).read_text()).get("fingerprint") ==
                              json.loads((new / f).read_text()).get("fingerprint")
                              for f in both if f.endswith("_done.json")}
    return report


def _dataset_columns(old: Path, new: Path) -> dict:
    table = "datasets/final_emotion_dataset.parquet"
    a, b = (pd.read_parquet(r / table).sort_values("image_id").reset_index(drop=True) for r in (old, new))
    common = [c for c in a.columns if c in b.columns and c != "processed_uri"]  # holds the root's path
    differing = [c for c in common if not a[c].equals(b[c])]
    return {"old_columns_equal": len(common) - len(differing), "old_columns_differing": differing,
            "new_columns": [c for c in b.columns if c not in a.columns],
            "old_columns_gone": [c for c in a.columns if c not in b.columns]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old_ref")
    parser.add_argument("photos", type=Path)
    parser.add_argument("--work", type=Path, default=REPO / "build" / "compare")
    parser.add_argument("--knob", action="append", default=[], help="name=value, for both versions")
    args = parser.parse_args()
    knobs = dict(k.split("=", 1) for k in args.knob)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    old_code = args.work / "old-code"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_code), args.old_ref], check=True)
    try:
        for name, code in (("old", old_code), ("new", REPO)):
            run_version(code, args.photos, args.work / name, knobs, args.work / f"home-{name}")
        print(json.dumps(compare(args.work / "old", args.work / "new"), indent=2))
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_code)], check=False)


if __name__ == "__main__":
    main()
