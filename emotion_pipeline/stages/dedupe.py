"""Stage: near-duplicate photos (a re-encoded, resized or slightly cropped copy of another photo).

Byte-identical copies are caught by discovery (same content id, status ``duplicate``); a copy saved
again, scaled or trimmed has other bytes and would otherwise be labelled, trained on, and could land
in the test split beside its original. Here every resized photo gets a 64-bit perceptual hash (DCT
hash of its processed copy, letterbox bars trimmed), and a photo whose hash is within
``dedupe_max_distance`` bits of an earlier photo's (in shard, then name, order) gets status
``near_duplicate`` with ``duplicate_of`` naming that original. Such photos never enter training.

The threshold (10 bits) comes from the shared Flickr30k sample (``bench/dedupe_threshold.py``): copies
re-encoded at JPEG quality 60 or halved stay within 6 bits of their original; of the copies cropped by
2% per side, 399 of 400 are within 10 bits (the last at 12), of those cropped by 4%, 81%; while no two
of the 400 distinct photos (79,800 pairs) are closer than 16 bits.

Hashes are kept in ``dedupe/near_duplicates`` and reused, so a new batch hashes only its own photos;
verdicts are recomputed over the whole dataset each time (cheap), so deleting an original promotes
its copy.
"""
from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from emotion_pipeline.core import catalog
from emotion_pipeline.core.progress import Progress
from emotion_pipeline.core.results import DedupeResult
from emotion_pipeline.core.runner import StageRun
from emotion_pipeline.core.storage import Storage
from emotion_pipeline.core.tables import read_table, write_table

log = logging.getLogger(__name__)

COLUMNS = ["image_id", "source_key", "shard", "phash", "hashed_size", "status", "error", "duplicate_of", "distance"]


def dedupe(run: StageRun) -> DedupeResult:
    """The stage function: hash the new resized photos, then judge every photo against earlier ones.

    Args:
        run: the config, both storages and every present photo's manifest row (``runner.StageRun``).

    Returns:
        How many photos have a hash, how many were hashed by this call, how many are near duplicates.

    Raises:
        MissingUpstream: a present shard is not resized yet.
    """
    root, config = run.root, run.config
    photos = _resized_photos(run)
    known = _known_hashes(root, config.image_size)
    todo = [i for i in photos["image_id"].unique() if i not in known]
    progress = Progress("dedupe: hashing", len(todo))

    def hash_of(image_id: str) -> int:
        with Image.open(io.BytesIO(root.read_bytes(catalog.processed_photo(image_id)))) as image:
            value = perceptual_hash(image)
        progress.step()
        return value

    # Reads (GCS round trips) and JPEG decoding release the GIL: threads keep every core busy.
    with ThreadPoolExecutor(max_workers=max(1, config.threads)) as pool:
        known.update(zip(todo, pool.map(hash_of, todo)))

    photos["phash"] = [f"{known[i]:016x}" for i in photos["image_id"]]
    photos["hashed_size"] = config.image_size
    originals, distances = near_duplicates(np.array([known[i] for i in photos["image_id"]], dtype=np.uint64),
                                           config.dedupe_max_distance)
    is_copy = originals >= 0
    photos["duplicate_of"] = [photos["source_key"].iat[o] if o >= 0 else None for o in originals]
    photos["distance"] = np.where(is_copy, distances, -1)
    photos["status"] = ["near_duplicate" if copy else None for copy in is_copy]
    photos["error"] = [f"near duplicate of {d} ({n} of 64 hash bits differ)" if d else None
                       for d, n in zip(photos["duplicate_of"], photos["distance"])]
    write_table(root, catalog.NEAR_DUPLICATES, photos[COLUMNS])
    result = DedupeResult(photos=len(photos), hashed=len(todo),
                          near_duplicates=int(is_copy.sum()), max_distance=config.dedupe_max_distance)
    log.info("dedupe: %d photos (%d hashed now), %d near duplicates", result.photos, result.hashed,
             result.near_duplicates)
    return result


def perceptual_hash(image: Image.Image) -> int:
    """64-bit DCT hash of a letterboxed photo: bars trimmed, 32x32 grey, the 8x8 lowest frequencies
    compared with their median. Robust to re-encoding and scaling, and to small crops."""
    from scipy.fft import dctn

    grey = np.asarray(ImageOps.grayscale(image))
    top, bottom = _bars(grey.max(axis=1))
    left, right = _bars(grey.max(axis=0))
    content = Image.fromarray(grey[top:grey.shape[0] - bottom, left:grey.shape[1] - right])
    pixels = np.asarray(content.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = dctn(pixels, norm="ortho")[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term (overall brightness) left out of the median
    return int("".join("1" if b else "0" for b in bits), 2)


def _bars(line_max: np.ndarray, black: int = 24) -> tuple[int, int]:
    """The letterbox bars' widths at both ends of an axis (lines whose brightest pixel is black).
    Letterboxing centres the photo, so both bars are taken as wide as the narrower one: a photo that
    is dark at one edge keeps its pixels."""
    dark = line_max <= black
    lead = int(np.argmin(dark)) if not dark.all() else 0
    trail = int(np.argmin(dark[::-1])) if not dark.all() else 0
    bar = min(lead, trail)
    return bar, bar


def near_duplicates(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """For photos in order: the index of the earlier original each is a near duplicate of (-1: none)
    and the Hamming distance to it. Photos are compared with originals only (photos that are not
    themselves copies), so a verdict always names a photo that stays in the dataset."""
    originals = np.full(len(hashes), -1)
    distances = np.zeros(len(hashes), dtype=int)
    kept = np.zeros(len(hashes), dtype=int)  # indices of the originals so far: kept[:n]
    n = 0
    for i, value in enumerate(hashes):
        if n:
            bits = np.bitwise_count(hashes[kept[:n]] ^ value)
            nearest = int(bits.argmin())  # the first of the closest
            if bits[nearest] <= max_distance:
                originals[i], distances[i] = kept[nearest], int(bits[nearest])
                continue
        kept[n] = i
        n += 1
    return originals, distances


def _resized_photos(run: StageRun) -> pd.DataFrame:
    """Every present photo resized ok, in (shard, source_key) order: the order that decides originals."""
    columns = ["image_id", "source_key", "shard"]
    metadata = run.tables("resize", empty=[*columns, "status"])
    photos = metadata.loc[metadata["status"] == "ok", columns]
    present = set(run.photos["source_key"])
    photos = photos[photos["source_key"].isin(present)]
    return photos.sort_values(["shard", "source_key"]).reset_index(drop=True)


def _known_hashes(root: Storage, image_size: int) -> dict[str, int]:
    """Hashes from the previous call, if they were taken from copies of the same size."""
    previous = read_table(root, catalog.NEAR_DUPLICATES)
    if previous is None:
        return {}
    same = previous[previous["hashed_size"] == image_size]
    return {i: int(h, 16) for i, h in zip(same["image_id"], same["phash"])}
