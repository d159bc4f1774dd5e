"""Measure DeepFace face detectors on real Flickr30k photos: faces found and seconds per photo.

    python bench/detectors.py --images ../shared/data/flickr30k_sample/images --n 100

The pipeline's default detector is chosen from this table (see README, "Face detector").
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def load_bgr(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        rgb = ImageOps.exif_transpose(im).convert("RGB")
    return np.asarray(rgb)[:, :, ::-1].copy()


def measure(detector: str, images: list[np.ndarray], min_confidence: float) -> dict:
    from deepface.modules import detection

    detection.detect_faces(detector_backend=detector, img=images[0])  # build the model once
    seconds, faces, photos_with_face = [], 0, 0
    for img in images:
        start = time.perf_counter()
        found = detection.detect_faces(detector_backend=detector, img=img)
        seconds.append(time.perf_counter() - start)
        confident = [f for f in found if (f.facial_area.confidence or 0) >= min_confidence]
        faces += len(confident)
        photos_with_face += bool(confident)
    return {
        "detector": detector,
        "photos": len(images),
        "faces": faces,
        "photos_with_face": photos_with_face,
        "median_s_per_photo": statistics.median(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", default="../shared/data/flickr30k_sample/images")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--detectors", default="opencv,yunet,mtcnn")
    parser.add_argument("--min-confidence", type=float, default=0.0)
    args = parser.parse_args()

    paths = sorted(Path(args.images).glob("*.jpg"))[: args.n]
    images = [load_bgr(p) for p in paths]
    print(f"{'detector':<10} {'photos':>6} {'faces':>6} {'photos with a face':>19} {'s/photo (median)':>17}")
    for name in args.detectors.split(","):
        row = measure(name, images, args.min_confidence)
        print(
            f"{row['detector']:<10} {row['photos']:>6} {row['faces']:>6} "
            f"{row['photos_with_face']:>19} {row['median_s_per_photo']:>17.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
