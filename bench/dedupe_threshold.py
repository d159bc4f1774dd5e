"""Measures the near-duplicate threshold of the dedupe stage on real photos.

For every photo: the perceptual hash of its processed copy against those of four altered copies
(re-encoded at JPEG quality 60, halved, cropped by 2% and by 4% on each side), and against every
other photo.
A threshold between the largest copy distance and the smallest distinct-photo distance separates
them; the README and ``stages/dedupe.py`` cite the figures this prints.

    python bench/dedupe_threshold.py --photos ../shared/data/flickr30k_sample/images
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

from emotion_pipeline.labelling.images import decode_rgb, letterbox, open_checked, to_jpeg
from emotion_pipeline.stages.dedupe import perceptual_hash


def processed(data: bytes, size: int = 224) -> Image.Image:
    """What the resize stage writes for these bytes, read back."""
    image, _ = open_checked(data, 10**9)
    return Image.open(io.BytesIO(to_jpeg(letterbox(decode_rgb(image, draft_size=size), size))))


def altered(data: bytes) -> dict[str, bytes]:
    photo = decode_rgb(open_checked(data, 10**9)[0])
    w, h = photo.size
    dx, dy = round(w * 0.04), round(h * 0.04)
    return {"re-encoded q60": to_jpeg(photo, quality=60),
            "halved": to_jpeg(photo.resize((w // 2, h // 2), Image.Resampling.BICUBIC)),
            "cropped 2%": to_jpeg(photo.crop((dx // 2, dy // 2, w - dx // 2, h - dy // 2))),
            "cropped 4%": to_jpeg(photo.crop((dx, dy, w - dx, h - dy)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True)
    args = parser.parse_args()
    paths = sorted(args.photos.glob("*.jpg"))
    originals, copies = [], {}
    for path in paths:
        data = path.read_bytes()
        value = perceptual_hash(processed(data))
        originals.append(value)
        for kind, copy in altered(data).items():
            copies.setdefault(kind, []).append(bin(value ^ perceptual_hash(processed(copy))).count("1"))
    hashes = np.array(originals, dtype=np.uint64)
    print(f"{len(paths)} photos")
    for kind, distances in copies.items():
        d = np.array(distances)
        print(f"  {kind:<15} distance to its original: median {np.median(d):.0f}, 99th pct "
              f"{np.percentile(d, 99):.0f}, max {d.max()}; caught at 8/10/12: "
              + "/".join(f"{(d <= t).mean():.1%}" for t in (8, 10, 12)))
    every = np.concatenate([np.bitwise_count(hashes[i + 1:] ^ hashes[i]) for i in range(len(hashes) - 1)])
    print(f"  distinct photos ({len(every)} pairs): closest {every.min()} bits; "
          + ", ".join(f"within {t}: {(every <= t).mean():.2e}" for t in (6, 8, 10, 12, 14, 16, 18)))

if __name__ == "__main__":
    main()
