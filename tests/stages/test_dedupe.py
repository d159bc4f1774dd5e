"""The dedupe stage on real photos: re-encoded, resized and cropped copies are found, named and kept
out of training; nothing else is flagged; a new batch hashes only its own photos."""
import io

import pandas as pd
from PIL import Image

from emotion_pipeline.core import catalog
from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.core.runner import run_stage
from emotion_pipeline.core.storage import open_storage
from emotion_pipeline.modeling.data import load_training_data
from emotion_pipeline.stages.all import build_dataset_and_features
from emotion_pipeline.stages.dedupe import near_duplicates
from tests.conftest import FACES, FLICKR, copy_photos, flickr_names


def jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_near_duplicates_are_flagged_named_and_never_trained_on(tmp_path):
    src = tmp_path / "src"
    originals = copy_photos(FLICKR, src, flickr_names(8, offset=120))
    faces = copy_photos(FACES, src, ["img1.jpg", "img5.jpg", "couple.jpg"])  # photos with confident faces
    face = Image.open(faces[0]).convert("RGB")
    photo = Image.open(originals[1]).convert("RGB")
    w, h = photo.size
    copies = {  # names sort after their originals: the original is the first in (shard, name) order
        "z_reencoded.jpg": (jpeg(face, quality=60), faces[0].name),
        "z_resized.jpg": (jpeg(face.resize((face.width // 2, face.height // 2))), faces[0].name),
        "z_cropped.png": (_png(photo.crop((w // 50, h // 50, w - w // 50, h - h // 50))), originals[1].name),
    }
    for name, (data, _) in copies.items():
        (src / name).write_bytes(data)
    config = PipelineConfig(source=str(src), root=str(tmp_path / "out"), shard_size=7, detector="mtcnn",
                            embed_weights="none")

    results = build_dataset_and_features(config)
    dataset = catalog.read_dataset(open_storage(config.root)).set_index("source_key")
    assert len(dataset) == len(originals) + len(faces) + len(copies)  # every photo has its row
    flagged = dataset[dataset["status"] == "near_duplicate"]
    assert sorted(flagged.index) == sorted(copies)
    for name, (_, original) in copies.items():
        assert flagged.loc[name, "duplicate_of"] == original
        assert original in flagged.loc[name, "error"]
        assert dataset.loc[original, "status"] in ("ok", "no_face")
    assert results["dedupe"].near_duplicates == 3 and results["dedupe"].hashed == len(dataset)
    # The copies of a face photo were annotated like any photo, yet never become training rows.
    assert dataset.loc["z_reencoded.jpg", "n_confident_faces"] >= 1
    training = load_training_data(open_storage(config.root), min_rows=3).frame
    assert training["source_key"].isin(list(copies)).sum() == 0
    assert faces[0].name in set(training["source_key"])

    # Unchanged: the registry's marker makes it a no-op. A new batch: only its photos are hashed.
    assert run_stage("dedupe", config).skipped is True
    copy_photos(FLICKR, src / "batch2", flickr_names(2, offset=140))
    again = build_dataset_and_features(config)["dedupe"]
    assert again.skipped is False and again.hashed == 2 and again.near_duplicates == 3

    # The original deleted: its copies are photos in their own right again (the first one the original).
    (src / faces[0].name).unlink()
    build_dataset_and_features(config)
    dataset = catalog.read_dataset(open_storage(config.root)).set_index("source_key")
    assert dataset.loc["z_reencoded.jpg", "status"] == "ok"
    assert dataset.loc["z_resized.jpg", "duplicate_of"] == "z_reencoded.jpg"


def test_verdicts_point_to_the_earliest_original_and_never_to_a_copy():
    hashes = pd.Series([0b0, 0b1, 0b11, 0b111, 0xFFFF0000]).astype("uint64").to_numpy()
    originals, distances = near_duplicates(hashes, max_distance=2)
    # 0b111 is 1 bit from the copy 0b11 but 3 from the original 0b0: it is a photo of its own.
    assert originals.tolist() == [-1, 0, 0, -1, -1] and distances.tolist() == [0, 1, 2, 0, 0]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
