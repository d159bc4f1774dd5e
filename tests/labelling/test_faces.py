"""The real DeepFace models on real photos (shared emotion weights, offline)."""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotion_pipeline.core.config import EMOTIONS, detector_min_confidence
from emotion_pipeline.labelling import teachers
from emotion_pipeline.labelling.faces import (
    MissingWeightsError,
    analyze_crops,
    build_models,
    detect_faces,
    face_record,
    scores_from_predictions,
)
from emotion_pipeline.stages.annotate import attribute_columns
from tests.conftest import FACES, FLICKR, flickr_names


def rgb(path):
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def emotion_models():
    return build_models(("emotion",))


def test_batched_scores_equal_deepface_analyze(emotion_models):
    from deepface import DeepFace

    photos = [FACES / "img1.jpg", FACES / "img2.jpg", FACES / "couple.jpg"]
    crops, reference = [], []
    for photo in photos:
        image = rgb(photo)
        crops += [f.crop for f in detect_faces(image, "opencv")]
        reference += DeepFace.analyze(image[:, :, ::-1].copy(), actions=("emotion",),
                                      detector_backend="opencv", enforce_detection=True, silent=True)
    assert len(crops) == len(reference) >= 4
    scores = analyze_crops(crops, emotion_models)["emotion"]
    expected = np.array([[r["emotion"][e] for e in EMOTIONS] for r in reference])
    np.testing.assert_allclose(scores, expected, atol=1e-3)
    assert [EMOTIONS[i] for i in scores.argmax(axis=1)] == [r["dominant_emotion"] for r in reference]


def test_a_photo_without_a_face_has_no_face_not_the_whole_photo():
    blank = np.full((300, 400, 3), 127, dtype=np.uint8)
    assert detect_faces(blank, "mtcnn") == []
    assert detect_faces(blank, "opencv") == []


def test_mtcnn_finds_the_faces_of_a_couple():
    faces = detect_faces(rgb(FACES / "couple.jpg"), "mtcnn")
    assert len([f for f in faces if f.confidence >= 0.9]) >= 2
    for face in faces:
        assert face.w > 0 and face.h > 0 and face.crop.max() <= 1.0


@pytest.mark.parametrize("detector", ["mtcnn", "opencv"])
def test_detection_is_exactly_deepface_extract_faces(detector):
    from deepface.modules import detection

    for photo in (FACES / "couple.jpg", FLICKR / flickr_names(1)[0]):
        image = rgb(photo)
        try:
            theirs = detection.extract_faces(image[:, :, ::-1].copy(), detector_backend=detector,
                                             enforce_detection=True, align=True)
        except ValueError:  # DeepFace's FaceNotDetected
            theirs = []
        mine = detect_faces(image, detector)
        assert [(f.x, f.y, f.w, f.h, f.confidence) for f in mine] == [
            (f["facial_area"]["x"], f["facial_area"]["y"], f["facial_area"]["w"], f["facial_area"]["h"],
             f["confidence"]) for f in theirs]
        for face, their in zip(mine, theirs):
            np.testing.assert_array_equal(face.crop, their["face"])


def test_compiled_mtcnn_gives_deepface_its_own_boxes_and_scores_from_threads():
    """The graph-compiled MTCNN (faces.face_detector) against DeepFace's eager one, called from two
    threads at once as annotate does: bit-identical regions."""
    from concurrent.futures import ThreadPoolExecutor

    from deepface.modules import modeling

    from emotion_pipeline.labelling.faces import face_detector

    framed = [np.pad(rgb(FLICKR / name)[:, :, ::-1], ((100, 100), (150, 150), (0, 0))) for name in flickr_names(6)]
    eager = modeling.build_model(task="face_detector", model_name="mtcnn")
    assert face_detector("mtcnn") is not eager  # DeepFace's own client stays eager
    with ThreadPoolExecutor(2) as pool:
        compiled = list(pool.map(face_detector("mtcnn").detect_faces, framed))
    expected = [eager.detect_faces(image) for image in framed]
    assert sum(len(found) for found in expected) >= 6
    assert compiled == expected  # FacialAreaRegion dataclasses: boxes, eyes, confidences


# Sample photos with several people, small faces among them (the Flickr30k faces MTCNN and
# DeepFace's YuNet wrapper miss): the first 40 of the sample by name.
YUNET_PHOTOS = 40


def direct_yunet(image: np.ndarray, threshold: float) -> np.ndarray:
    """YuNet as OpenCV's own sample calls it, on the photo as it is: rows x, y, w, h, ..., score."""
    import cv2

    weights = os.path.join(os.environ["DEEPFACE_HOME"], ".deepface", "weights", "face_detection_yunet_2023mar.onnx")
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    model = cv2.FaceDetectorYN.create(weights, "", (bgr.shape[1], bgr.shape[0]), threshold)
    _, found = model.detect(bgr)
    return np.zeros((0, 15)) if found is None else found


def test_yunet_finds_the_boxes_of_a_direct_opencv_call_and_more_faces_than_deepfaces_wrapper(monkeypatch):
    """The pipeline's YuNet path (photo at its own resolution, boxes offset into DeepFace's frame for
    the alignment crop) against YuNet called directly on the unframed photo at the same threshold:
    the same faces, boxes within a pixel (the pipeline's are DeepFace's integer boxes, clipped to the
    photo as DeepFace clips them), the same scores. DeepFace's wrapper (the framed photo shrunk to
    640 px) at that threshold finds fewer."""
    from deepface.modules import detection

    threshold = detector_min_confidence("yunet")
    monkeypatch.setenv("yunet_score_threshold", str(threshold))  # DeepFace's wrapper reads it per call
    mine_total = theirs_total = 0
    for name in flickr_names(YUNET_PHOTOS):
        image = rgb(FLICKR / name)
        height, width = image.shape[:2]
        mine = [f for f in detect_faces(image, "yunet") if f.confidence >= threshold]
        direct = direct_yunet(image, threshold)
        assert len(mine) == len(direct), name
        for face, row in zip(sorted(mine, key=lambda f: -f.confidence), direct[np.argsort(-direct[:, -1])]):
            x, y = max(0.0, row[0]), max(0.0, row[1])
            expected = (x, y, min(width - x - 1, row[2]), min(height - y - 1, row[3]))
            np.testing.assert_allclose((face.x, face.y, face.w, face.h), expected, atol=1, err_msg=name)
            assert face.confidence == float(row[-1])
            assert face.crop.ndim == 3 and face.crop.shape[0] > 0 and face.crop.max() <= 1.0
        mine_total += len(mine)
        try:
            theirs_total += len(detection.extract_faces(image[:, :, ::-1].copy(), detector_backend="yunet",
                                                        enforce_detection=True, align=True))
        except ValueError:  # DeepFace's FaceNotDetected
            pass
    assert mine_total > theirs_total
    assert mine_total >= 40  # the sample's first 40 photos hold dozens of faces


def test_a_photo_upscaled_twice_keeps_its_faces():
    """YuNet sees the photo at its own resolution, so a 2x copy of a sample photo has the same faces
    at twice the coordinates (DeepFace's wrapper shrank anything over 640 px: the 2x copy lost its
    small faces)."""
    threshold = detector_min_confidence("yunet")
    kept = 0
    for name in flickr_names(YUNET_PHOTOS)[:12]:
        image = rgb(FLICKR / name)
        big = np.asarray(Image.fromarray(image).resize((2 * image.shape[1], 2 * image.shape[0]),
                                                       Image.Resampling.BICUBIC))
        small_faces = [f for f in detect_faces(image, "yunet") if f.confidence >= threshold and f.h >= 20]
        big_faces = [f for f in detect_faces(big, "yunet") if f.confidence >= threshold]
        for face in small_faces:
            overlaps = [iou((2 * face.x, 2 * face.y, 2 * face.w, 2 * face.h), (b.x, b.y, b.w, b.h)) for b in big_faces]
            assert max(overlaps, default=0) >= 0.6, f"{name}: the face at {face.x},{face.y} is lost at 2x"
        kept += len(small_faces)
    assert kept >= 10


def iou(a, b) -> float:
    w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def test_yunet_gives_the_same_faces_from_threads():
    """Annotate detects from several threads: YuNet keeps one OpenCV detector per thread."""
    from concurrent.futures import ThreadPoolExecutor

    from emotion_pipeline.labelling.faces import detector_is_thread_safe

    assert detector_is_thread_safe("yunet")
    images = [rgb(FLICKR / name) for name in flickr_names(8)]

    def boxes(image):
        return [(f.x, f.y, f.w, f.h, f.confidence) for f in detect_faces(image, "yunet")]

    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(boxes, images * 3))
    assert threaded == [boxes(image) for image in images] * 3


def test_yunet_weights_are_where_deepface_keeps_them(tmp_path, monkeypatch):
    """The file DeepFace's own YuNet downloads, at the path DeepFace uses ($DEEPFACE_HOME, else the
    home folder: ~/.deepface/weights): the project never needs ../shared, only tests point there."""
    from deepface.commons import folder_utils

    from emotion_pipeline.labelling.faces import YUNET_WEIGHTS, YuNet, weights_dir

    assert YuNet().weights == str(weights_dir() / YUNET_WEIGHTS)
    monkeypatch.delenv("DEEPFACE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights_dir() == tmp_path / ".deepface" / "weights"
    assert weights_dir() == Path(folder_utils.get_deepface_home()) / ".deepface" / "weights"


def test_skip_detector_treats_the_whole_photo_as_the_face():
    image = rgb(FACES / "img1.jpg")
    (face,) = detect_faces(image, "skip")
    assert (face.x, face.y) == (0, 0) and face.confidence == 1.0
    assert face.crop.shape[:2] == image.shape[:2]


@pytest.mark.parametrize("action, raw, expected_shape", [
    ("age", np.array(31.5), (1,)),
    ("age", np.array([31.5, 40.0]), (2,)),
    ("gender", np.array([0.3, 0.7]), (1, 2)),
    ("race", np.array([[1, 1, 1, 1, 1, 5], [2, 2, 2, 2, 2, 0]], dtype=float), (2, 6)),
    ("emotion", np.ones(7), (1, 7)),
])
def test_model_outputs_become_deepface_scales(action, raw, expected_shape):
    n = expected_shape[0]
    scores = scores_from_predictions(action, raw, n)
    assert scores.shape == expected_shape
    if action in ("race", "emotion"):
        np.testing.assert_allclose(scores.sum(axis=1), 100.0)
    if action == "gender":
        np.testing.assert_allclose(scores, [[30.0, 70.0]])


def test_face_record_fills_exactly_the_attribute_columns():
    scores = {
        "emotion": np.array([[0, 0, 0, 90, 5, 5, 0.0]]),
        "age": np.array([33.0]),
        "gender": np.array([[80.0, 20.0]]),
        "race": np.array([[0, 0, 0, 60, 40, 0.0]]),
    }
    record = face_record(scores, 0)
    # DeepFace's columns; the second teacher's (xception_*) come from teachers.scores_record.
    second = teachers.scores_record(np.full((1, len(EMOTIONS)), np.nan), 0)
    assert sorted({**record, **second}) == sorted(attribute_columns(("emotion", "age", "gender", "race")))
    assert not set(record) & set(second)
    assert record["dominant_emotion"] == "happy" and record["age"] == 33
    assert record["dominant_gender"] == "Woman" and record["dominant_race"] == "white"


@pytest.mark.timeout(180)  # a hang fails the test instead of stalling CI
def test_missing_weights_are_a_clear_error_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))  # no weights in here
    with pytest.raises(MissingWeightsError, match="age_model_weights.h5") as err:
        build_models(("age",))
    assert str(tmp_path) in str(err.value)


def test_mtcnn_never_runs_a_stage_on_an_empty_batch():
    """Where no candidate survives PNet or RNet, the next stage got a batch of 0 patches: its graph
    (once traced for several batch sizes) raised INVALID_ARGUMENT "Incompatible shapes ... [0,48,48,3]",
    which TensorFlow logged for every such photo. Now an empty batch gets empty outputs of the right
    shapes without running the graph."""
    import tensorflow as tf

    from emotion_pipeline.labelling.faces import face_detector

    onet = face_detector("mtcnn").model._stages[2].stage  # noqa: SLF001
    for n in (1, 2, 3, 5):  # the traces a few photos leave behind
        onet._model(tf.zeros((n, 48, 48, 3)))  # noqa: SLF001
    offsets, landmarks, scores = onet._model(tf.zeros((0, 48, 48, 3)))  # noqa: SLF001
    assert (offsets.shape, landmarks.shape, scores.shape) == ((0, 4), (0, 10), (0, 2))


def test_imagenet_weights_that_cannot_be_downloaded_are_a_clear_error(tmp_path, monkeypatch):
    """Offline, the default embed_weights=imagenet failed with Keras' raw "URL fetch failure" traceback."""
    import keras.src.applications.resnet as keras_resnet

    from emotion_pipeline.modeling.embedding import resnet50

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached copy
    monkeypatch.setattr(keras_resnet, "BASE_WEIGHTS_PATH", "http://127.0.0.1:9/")  # nothing listens there
    resnet50.cache_clear()
    with pytest.raises(MissingWeightsError, match=r"resnet50_weights_tf_dim_ordering_tf_kernels_notop\.h5.*"
                                                  r"--embed-weights PATH.*--embed-weights none"):
        resnet50("imagenet")
    resnet50.cache_clear()
