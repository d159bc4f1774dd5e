"""A fair choice of face detector: each detector the way it works best, on real Flickr30k photos.

    make bench-detectors
    python bench/detectors.py --images ../shared/data/flickr30k_sample/images [--n 400] [--out DIR]

Configurations (``--detectors``):

* ``yunet``: the pipeline's YuNet (``faces.YuNet``): ``cv2.FaceDetectorYN`` on the photo at its own
  resolution; the black frame only serves DeepFace's alignment crop.
* ``mtcnn``: the pipeline's MTCNN: DeepFace's, on the photo framed in black (``faces.detect_faces``).
* ``mtcnn-photo``: the same MTCNN on the photo itself, without the frame (a quarter of the pixels).
* ``yunet-deepface``: DeepFace's YuNet wrapper as ``DeepFace.extract_faces`` runs it (the photo framed,
  then shrunk to 640 px): what the README's earlier table measured as "yunet".
* ``opencv``: DeepFace's Haar cascade (framed), for reference.

Every configuration runs once per photo at a low score floor; the threshold curve (photos with a
face, faces, per threshold) comes from its scores. Faces are counted when at least ``--min-face``
pixels tall (in the photo). Seconds per photo are what the call costs as the configuration runs it
(the pipeline's paths with their alignment crops), one thread each (``--threads``).

At each detector's operating point (``--points``, e.g. yunet 0.7, mtcnn 0.9) faces are matched
across detectors by overlap (IoU >= ``--iou``), and contact sheets show the faces only one of
``yunet`` and ``mtcnn`` found (red box; score and height under each tile), so a person can judge
them. Where ``--captions`` exist, the smiling check runs per detector: on the photos whose captions
say happy (smiling, laughing: the caption check's lexicon, ``--min-agree`` captions), how often the
emotion network labels the photo's largest eligible face happy, with the crop rule of the pipeline.

Writes to ``--out``: ``table.md`` (the README's table), ``curves.csv``, ``results.json``, ``faces.csv``
(every face of every configuration) and ``sheets/*.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the package beside it

from bench.common import iou  # noqa: E402
from emotion_pipeline.core.config import DETECTOR_MIN_CONFIDENCE, PipelineConfig  # noqa: E402
from emotion_pipeline.labelling.images import load_rgb_array  # noqa: E402

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)
FLOOR = 0.3  # the lowest score asked of every detector that takes one
SHEET_DETECTORS = ("yunet", "mtcnn")


@dataclass
class Face:
    photo: str
    detector: str
    x: float
    y: float
    w: float
    h: float
    score: float


def set_threads(n: int) -> None:
    """One thread (by default) per detector: its cost, not this machine's core count."""
    import cv2
    import tensorflow as tf

    cv2.setNumThreads(n)
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(n)


# -- the configurations: photo (RGB) -> faces (box in photo pixels, score), timed ------------------

def runner(name: str):
    """A function RGB photo -> list of (x, y, w, h, score), each configuration as it runs best."""
    from emotion_pipeline.labelling import faces

    if name == "yunet":
        faces.face_detector("yunet").floor = FLOOR  # the curve goes below the pipeline's floor

        def run(rgb):
            return [(f.x, f.y, f.w, f.h, f.confidence) for f in faces.detect_faces(rgb, "yunet")]
        return run
    if name == "mtcnn":
        def run(rgb):
            return [(f.x, f.y, f.w, f.h, f.confidence) for f in faces.detect_faces(rgb, "mtcnn")]
        return run
    if name == "mtcnn-photo":
        client = faces.face_detector("mtcnn")

        def run(rgb):
            found = client.detect_faces(np.ascontiguousarray(rgb[:, :, ::-1]))
            return [(r.x, r.y, r.w, r.h, float(r.confidence or 0)) for r in found]
        return run
    if name in ("yunet-deepface", "opencv"):
        from deepface.modules import detection

        os.environ["yunet_score_threshold"] = str(FLOOR)  # DeepFace's wrapper reads it per call
        backend = "yunet" if name == "yunet-deepface" else "opencv"

        def run(rgb):
            found = detection.detect_faces(detector_backend=backend, img=np.ascontiguousarray(rgb[:, :, ::-1]),
                                           align=True, expand_percentage=0)
            return [(f.facial_area.x, f.facial_area.y, f.facial_area.w, f.facial_area.h,
                     float(f.confidence or 0)) for f in found]
        return run
    raise SystemExit(f"unknown detector configuration {name!r}")


def measure(name: str, photos: dict[str, np.ndarray]) -> tuple[list[Face], list[float]]:
    run = runner(name)
    run(next(iter(photos.values())))  # build the model and trace the graphs before the clock
    found, seconds = [], []
    for photo, rgb in photos.items():
        start = time.perf_counter()
        boxes = run(rgb)
        seconds.append(time.perf_counter() - start)
        found += [Face(photo, name, float(x), float(y), float(w), float(h), float(s)) for x, y, w, h, s in boxes]
    return found, seconds


# -- figures ---------------------------------------------------------------------------------------

def curve(faces: pd.DataFrame, n_photos: int, min_face: int) -> pd.DataFrame:
    rows = []
    for detector, group in faces.groupby("detector"):
        big = group[group["h"] >= min_face]
        for t in THRESHOLDS:
            kept = big[big["score"] >= t]
            rows.append({"detector": detector, "threshold": t, "faces": len(kept),
                         "photos_with_face": kept["photo"].nunique(),
                         "share_photos_with_face": round(kept["photo"].nunique() / n_photos, 4),
                         f"faces_under_{min_face}px": int(((group["h"] < min_face) & (group["score"] >= t)).sum())})
    return pd.DataFrame(rows)


def match(a: pd.DataFrame, b: pd.DataFrame, threshold: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Greedy one-to-one matching of two detectors' faces per photo, best overlap first."""
    pairs, only_a, only_b = [], [], []
    for photo in sorted(set(a["photo"]) | set(b["photo"])):
        fa, fb = a[a["photo"] == photo], b[b["photo"] == photo]
        candidates = sorted(((iou(ra[1:5], rb[1:5]), ia, ib)
                             for ia, ra in zip(fa.index, fa[["photo", "x", "y", "w", "h"]].itertuples(index=False))
                             for ib, rb in zip(fb.index, fb[["photo", "x", "y", "w", "h"]].itertuples(index=False))),
                            reverse=True)
        used_a, used_b = set(), set()
        for overlap, ia, ib in candidates:
            if overlap < threshold:
                break
            if ia in used_a or ib in used_b:
                continue
            used_a.add(ia)
            used_b.add(ib)
            pairs.append((ia, ib))
        only_a += [i for i in fa.index if i not in used_a]
        only_b += [i for i in fb.index if i not in used_b]
    return pairs, only_a, only_b


def at_point(faces: pd.DataFrame, detector: str, threshold: float) -> pd.DataFrame:
    return faces[(faces["detector"] == detector) & (faces["score"] >= threshold)]


def compare(faces: pd.DataFrame, a_name: str, b_name: str, points: dict[str, float], min_face: int,
            iou_min: float) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Two detectors at their operating points. Faces are matched whatever their size, then counted
    when at least ``min_face`` tall: a 21 px face one found is not "only" its own because the other's
    box of the same face is 19 px."""
    a, b = at_point(faces, a_name, points[a_name]), at_point(faces, b_name, points[b_name])
    pairs, only_a, only_b = match(a, b, iou_min)
    big_a, big_b = a[a["h"] >= min_face], b[b["h"] >= min_face]
    only_a, only_b = a.loc[[i for i in only_a if i in big_a.index]], b.loc[[i for i in only_b if i in big_b.index]]
    b_found = sum(1 for ia, ib in pairs if ib in big_b.index)
    figures = {"faces": [len(big_a), len(big_b)], "matched": sum(1 for ia, ib in pairs if ia in big_a.index
                                                                   or ib in big_b.index),
               f"only_{a_name}": len(only_a), f"only_{b_name}": len(only_b),
               f"share_of_{b_name}_found_by_{a_name}": round(b_found / len(big_b), 3) if len(big_b) else None}
    return figures, only_a, only_b


# -- contact sheets --------------------------------------------------------------------------------

def contact_sheet(rows: pd.DataFrame, photos: dict[str, np.ndarray], title: str, path: Path,
                  tile: int = 144, columns: int = 10) -> None:
    """Each face with half a face of context around it, its box in red, score and height below."""
    font = _font(12)
    label_h = 16
    n = max(len(rows), 1)
    sheet = Image.new("RGB", (columns * tile, 24 + -(-n // columns) * (tile + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), f"{title} ({len(rows)})", fill="black", font=_font(14))
    for i, face in enumerate(rows.itertuples(index=False)):
        rgb = photos[face.photo]
        side = max(face.w, face.h) * 2.0
        cx, cy = face.x + face.w / 2, face.y + face.h / 2
        left, top = int(cx - side / 2), int(cy - side / 2)
        crop = Image.fromarray(rgb).crop((left, top, left + int(side), top + int(side)))  # black outside the photo
        scale = tile / max(crop.size)
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
        box = [(face.x - left) * scale, (face.y - top) * scale, (face.x + face.w - left) * scale,
               (face.y + face.h - top) * scale]
        ImageDraw.Draw(crop).rectangle(box, outline=(255, 0, 0), width=2)
        col, row = i % columns, i // columns
        x0, y0 = col * tile, 24 + row * (tile + label_h)
        sheet.paste(crop, (x0, y0))
        draw.text((x0 + 2, y0 + tile), f"{Path(face.photo).stem[:10]} {face.score:.2f} h{face.h:.0f}",
                  fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def _font(size: int):
    for candidate in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(candidate, size)
        except OSError:
            continue
    return ImageFont.load_default()


def sheets(faces: pd.DataFrame, photos: dict[str, np.ndarray], points: dict[str, float], min_face: int,
           out: Path, iou_min: float, per_sheet: int = 120) -> list[str]:
    a_name, b_name = SHEET_DETECTORS
    _, only_a, only_b = compare(faces, a_name, b_name, points, min_face, iou_min)
    written = []
    below = faces[(faces["detector"] == a_name) & (faces["score"] < points[a_name])
                  & (faces["score"] >= points[a_name] - 0.1) & (faces["h"] >= min_face)]
    for name, found, title in (
        (f"only_{a_name}", only_a, f"{a_name} >= {points[a_name]}, not found by {b_name} >= {points[b_name]}"),
        (f"only_{b_name}", only_b, f"{b_name} >= {points[b_name]}, not found by {a_name} >= {points[a_name]}"),
        (f"{a_name}_just_below", below, f"{a_name} between {points[a_name] - 0.1:.2f} and {points[a_name]}"),
        (f"all_{a_name}", at_point(faces, a_name, points[a_name]).query(f"h >= {min_face}"),
         f"every {a_name} face >= {points[a_name]}"),
    ):
        rows = found.sort_values(["photo", "x"])
        for part, start in enumerate(range(0, max(len(rows), 1), per_sheet)):
            path = out / "sheets" / f"{name}_{part + 1}.png"
            contact_sheet(rows.iloc[start:start + per_sheet], photos, f"{title}, faces >= {min_face} px", path)
            written.append(str(path))
    return written


# -- the smiling check -----------------------------------------------------------------------------

def smiling_check(captions: Path, photos: dict[str, np.ndarray], detectors: list[str], points: dict[str, float],
                  min_face: int, min_agree: int) -> dict:
    """Per detector: on the photos whose captions say happy, the share whose largest eligible face the
    emotion network labels happy (DeepFace's crop rule, the pipeline's batched scores)."""
    from emotion_pipeline.core.config import EMOTIONS
    from emotion_pipeline.labelling import captions as caption_module
    from emotion_pipeline.labelling.faces import analyze_crops, build_models, detect_faces

    labels = caption_module.caption_labels(caption_module.read_captions(str(captions)),
                                           caption_module.read_lexicon(None), min_agree)
    happy = sorted(set(labels.loc[labels["caption_label"] == "happy", "photo"]) & set(photos))
    models = build_models(("emotion",))
    result = {"photos": len(happy), "min_agree": min_agree}
    for detector in detectors:
        if detector not in ("yunet", "mtcnn"):
            continue  # the pipeline's paths: the crops are the ones annotate labels
        crops = []
        for photo in happy:
            found = [f for f in detect_faces(photos[photo], detector)
                     if f.confidence >= points[detector] and f.h >= min_face]
            if found:
                crops.append(max(found, key=lambda f: f.w * f.h).crop)
        scores = analyze_crops(crops, models).get("emotion", np.zeros((0, 7)))
        said_happy = int((scores.argmax(axis=1) == EMOTIONS.index("happy")).sum()) if crops else 0
        result[detector] = {"photos_with_face": len(crops), "labelled_happy": said_happy,
                            "share_happy": round(said_happy / len(crops), 3) if crops else None}
    return result


# -- main ------------------------------------------------------------------------------------------

def load(paths: list[Path], max_side: int) -> dict[str, np.ndarray]:
    config = PipelineConfig(source=".", root=".")
    return {p.name: load_rgb_array(p.read_bytes(), config.max_image_pixels, max_side)[0] for p in paths}


def table(curves: pd.DataFrame, seconds: dict[str, list[float]], points: dict[str, float], n: int,
          min_face: int) -> str:
    lines = [f"| {n} photos | threshold | photos with a face | faces >= {min_face} px | faces (any size) "
             "| seconds per photo |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for detector, point in points.items():
        if detector not in seconds:
            continue
        for t in sorted({point, *(x for x in (0.7, 0.8, 0.9) if x >= curves.loc[curves["detector"] == detector,
                                                                                   "threshold"].min())}):
            row = curves[(curves["detector"] == detector) & (np.isclose(curves["threshold"], t))]
            if row.empty:
                continue
            row = row.iloc[0]
            mark = " **(operating point)**" if np.isclose(t, point) else ""
            lines.append(f"| {detector}{mark} | {t:g} | {100 * row['share_photos_with_face']:.1f}% | "
                         f"{row['faces']} | {row['faces'] + row[f'faces_under_{min_face}px']} | "
                         f"{float(np.mean(seconds[detector])):.3f} |")
    return "\n".join(lines)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=Path("../shared/data/flickr30k_sample/images"))
    parser.add_argument("--captions", type=Path, help="default: captions.csv beside the images folder, if any")
    parser.add_argument("--n", type=int, default=0, help="the first N photos by name (0: all)")
    parser.add_argument("--detectors", default="yunet,mtcnn,mtcnn-photo,yunet-deepface,opencv")
    parser.add_argument("--points", default="",
                        help="operating points, e.g. yunet=0.7,mtcnn=0.9 (default: each detector's "
                             "min_face_confidence default, config.DETECTOR_MIN_CONFIDENCE)")
    parser.add_argument("--min-face", type=int, default=20, help="faces shorter than this (px) are not counted")
    parser.add_argument("--iou", type=float, default=0.3, help="overlap for two detectors' boxes to be one face")
    parser.add_argument("--max-side", type=int, default=PipelineConfig(source=".", root=".").detect_max_side,
                        help="the pipeline's detect_max_side: longer photos are shrunk to it first")
    parser.add_argument("--min-agree", type=int, default=2, help="captions that must say happy")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("build/bench-detectors"))
    parser.add_argument("--reuse", action="store_true",
                        help="recompute the figures and sheets from --out's faces.csv and seconds.json")
    return parser.parse_args()


def detect_all(detectors: list[str], photos: dict[str, np.ndarray], out: Path, reuse: bool
               ) -> tuple[pd.DataFrame, dict[str, list[float]]]:
    """Every configuration's faces (and seconds per photo), or the last run's with ``reuse``."""
    if reuse:
        return pd.read_csv(out / "faces.csv"), json.loads((out / "seconds.json").read_text())
    found, seconds = [], {}
    for name in detectors:
        start = time.perf_counter()
        faces_of, seconds[name] = measure(name, photos)
        found += faces_of
        print(f"  {name}: {len(faces_of)} faces at score >= {FLOOR} (any size), "
              f"{np.mean(seconds[name]):.3f} s/photo, {time.perf_counter() - start:.0f} s", flush=True)
    faces = pd.DataFrame([vars(f) for f in found], columns=list(Face.__dataclass_fields__))
    faces.to_csv(out / "faces.csv", index=False)
    (out / "seconds.json").write_text(json.dumps(seconds))
    return faces, seconds


def main() -> None:
    args = arguments()
    set_threads(args.threads)
    detectors = args.detectors.split(",")
    points = {d: DETECTOR_MIN_CONFIDENCE.get(d.split("-")[0], 0.9) for d in detectors}
    if "yunet-deepface" in points:
        points["yunet-deepface"] = 0.9  # DeepFace's own default for its wrapper (yunet_score_threshold)
    points.update({k: float(v) for k, v in (p.split("=") for p in args.points.split(",") if p)})
    paths = sorted(args.images.glob("*.jpg"))
    photos = load(paths[: args.n] if args.n else paths, args.max_side)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{len(photos)} photos from {args.images}; operating points {points}; writing to {args.out}", flush=True)

    faces, seconds = detect_all(detectors, photos, args.out, args.reuse)
    curves = curve(faces, len(photos), args.min_face)
    curves.to_csv(args.out / "curves.csv", index=False)
    matches = {f"{a} vs {b}": compare(faces, a, b, points, args.min_face, args.iou)[0]
               for i, a in enumerate(detectors) for b in detectors[i + 1:]}
    written = sheets(faces, photos, points, args.min_face, args.out, args.iou) \
        if all(d in detectors for d in SHEET_DETECTORS) else []
    captions = args.captions or args.images.parent / "captions.csv"
    smiling = smiling_check(captions, photos, detectors, points, args.min_face, args.min_agree) \
        if captions.is_file() else None

    markdown = table(curves, seconds, points, len(photos), args.min_face)
    (args.out / "table.md").write_text(markdown + "\n")
    (args.out / "results.json").write_text(json.dumps({
        "photos": len(photos), "min_face": args.min_face, "iou": args.iou, "points": points,
        "threads": args.threads, "max_side": args.max_side,
        "seconds_per_photo": {d: {"mean": round(float(np.mean(s)), 4), "median": round(float(np.median(s)), 4)}
                              for d, s in seconds.items()},
        "matches": matches, "smiling": smiling, "sheets": written, "curves": curves.to_dict(orient="records"),
    }, indent=2))
    print("\n" + markdown + "\n")
    print(f"threshold curves (faces >= {args.min_face} px), faces then photos with a face:")
    print(curves.pivot(index="threshold", columns="detector", values="faces").to_string())
    print(curves.pivot(index="threshold", columns="detector", values="photos_with_face").to_string())
    print(f"\nmatched across detectors (IoU >= {args.iou:g}):")
    for pair, figures in matches.items():
        print(f"  {pair}: {figures}")
    if smiling:
        print(f"\nsmiling check: {json.dumps(smiling)}")
    print(f"\ncontact sheets: {', '.join(written)}")


if __name__ == "__main__":
    main()
