"""One model-input path: embed, evaluate (SHAP heat maps and the gold check) and the API turn the same
photo into the same vector (a training/serving skew would show here first). Embed and evaluate make a
row's input with ``embedding.row_input`` from the photo's bytes (read from the source, or by URI for a
gold photo); the API detects the face in the uploaded bytes itself.

"The same" is up to float32 rounding: on some CPUs (seen on AMD EPYC, not on Intel Xeon) oneDNN rounds
a row differently depending on the batch it is computed in, by ~1e-7 of the vector's scale. Any real
skew (another crop, resize, colour order or normalisation) moves a vector by more than 1e-2 of it.
"""
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from emotion_pipeline.core import catalog
from emotion_pipeline.core.storage import open_storage, read_uri
from emotion_pipeline.labelling.images import read_photo
from emotion_pipeline.modeling.embedding import image_vectors, resnet50, row_input
from emotion_pipeline.serve.predictor import Predictor, ServeSettings


def test_a_vector_does_not_depend_on_the_batch_it_was_computed_in():
    # ResNet50 with weights=None: same graph and kernels as ImageNet's (no internet here).
    model = resnet50("none")
    inputs = np.random.default_rng(0).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    together = image_vectors(model, inputs, batch_size=32)
    for batch_size in (1, 2, 3):
        assert_same_vectors(image_vectors(model, inputs, batch_size), together)
    assert_same_vectors(image_vectors(model, inputs[2:3], batch_size=32)[0], together[2])  # one alone


@pytest.mark.integration
def test_the_same_photo_gets_the_same_vector_in_embed_evaluate_and_the_api(trained_root):
    config, _ = trained_root
    root, source = open_storage(config.root), open_storage(config.source)
    vectors, index = catalog.read_features(root)
    dataset = catalog.read_dataset(root).set_index("image_id", drop=False)
    resnet = resnet50(config.embed_weights, config.mixed_precision)
    predictor = Predictor(ServeSettings(root=config.root))

    faces = index[index["input"] == "face"].head(3)
    assert len(faces) == 3
    for entry in faces.itertuples(index=False):
        note = dataset.loc[entry.image_id]
        box = tuple(int(note[f"face_{k}"]) for k in ("x", "y", "w", "h"))
        embedded = vectors[entry.row]
        # evaluate's SHAP heat maps: the dataset row, its photo read from the source as embed reads it
        heatmap = image_vectors(resnet, source_input(config, source, note, face=True)[None],
                                config.embed_batch_size)[0]
        # evaluate's gold check: a gold row naming this photo and its face, its photo read by URI
        gold_row = SimpleNamespace(uri=note["source_uri"], face_x=box[0], face_y=box[1], face_w=box[2], face_h=box[3])
        gold_input = row_input(read_uri(gold_row.uri), gold_row, face=config.embed_input == "face",
                               max_pixels=config.max_image_pixels)
        gold = image_vectors(resnet, gold_input[None], config.embed_batch_size)[0]
        # the API: detection on the uploaded bytes, then the same path
        boxes, _, api_vectors, _ = predictor.face_vectors(source.read_bytes(note["source_key"]), threading.Event())
        assert box in boxes, (box, boxes)
        served = api_vectors[boxes.index(box)]
        assert np.abs(embedded).sum() > 0
        for other in (heatmap, gold, served):
            assert_same_vectors(other, embedded)

    # A photo without a face is embedded whole, and evaluate's loader agrees.
    whole = index[index["input"] == "photo"].iloc[0]
    note = dataset.loc[whole["image_id"]]
    again = image_vectors(resnet, source_input(config, source, note, face=False)[None], config.embed_batch_size)[0]
    assert_same_vectors(again, vectors[whole["row"]])


def source_input(config, source, row, face: bool) -> np.ndarray:
    return row_input(read_photo(source, row["source_key"]), row, face=face, max_pixels=config.max_image_pixels)


def assert_same_vectors(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 rounding of the kernels (see the module's docstring)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6 * float(np.abs(expected).max()))
