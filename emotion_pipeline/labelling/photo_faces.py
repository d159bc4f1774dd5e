"""A photo's faces as annotate and the gold check both see them, so both label a photo alike.

    faces = photo_faces(data, config, detector, min_size)   # detect -> scale back -> eligible
    chosen = label_face(faces, config.label_face)            # the face that labels it, or None

The detector runs on the photo scaled down to ``detect_max_side``; boxes are given back in the
original photo's pixels. A face may label the photo when it is confident and tall enough
(``labels.eligible``); among those, ``labels.pick_label_face`` chooses by the ``label_face`` policy.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emotion_pipeline.core.config import PipelineConfig
from emotion_pipeline.labelling.faces import detect_faces
from emotion_pipeline.labelling.images import load_rgb_array
from emotion_pipeline.labelling.labels import eligible, pick_label_face


@dataclass
class PhotoFace:
    """One detected face: its box in the original photo's pixels, and whether it may label the photo."""
    index: int  # in detection order
    x: int
    y: int
    w: int
    h: int
    confidence: float
    confident: bool  # at or above min_face_confidence
    eligible: bool  # may label the photo: confident, and at least the minimum size tall
    crop: np.ndarray | None = field(default=None, repr=False)  # for the emotion models, until scored
    scores: dict[str, Any] = field(default_factory=dict)  # the models' columns (faces.face_record)

    def crop_to_score(self) -> np.ndarray:
        """The crop the emotion models read; it is released (None) once the face is scored."""
        if self.crop is None:
            raise ValueError(f"face {self.index} is scored already: its crop was released")
        return self.crop

    def box(self) -> dict[str, Any]:
        """The face's columns of annotate's faces table, its scores aside."""
        return {"face_index": self.index, "x": self.x, "y": self.y, "w": self.w, "h": self.h,
                "confidence": self.confidence, "confident": self.confident, "eligible": self.eligible}


def photo_faces(data: bytes, config: PipelineConfig, detector: str, min_size: float) -> list[PhotoFace]:
    """Every face ``detector`` finds in a photo (its bytes), with its crop.

    Args:
        data: the original photo's bytes.
        config: ``max_image_pixels``, ``detect_max_side`` and ``min_face_confidence``.
        detector: the face detector (``skip``: the whole photo is the face).
        min_size: the height, in pixels of the original photo, a face needs to label the photo.

    Raises:
        images.ImageError: the photo cannot be decoded (its status says why).
    """
    rgb, scale = load_rgb_array(data, config.max_image_pixels, config.detect_max_side)
    return [PhotoFace(
        index=index, x=round(face.x / scale), y=round(face.y / scale), w=round(face.w / scale),
        h=round(face.h / scale), confidence=face.confidence,
        confident=face.confidence >= config.face_confidence_threshold,
        eligible=eligible(face.confidence, face.h / scale, min_confidence=config.face_confidence_threshold,
                          min_size=min_size),
        crop=face.crop,
    ) for index, face in enumerate(detect_faces(rgb, detector))]


def label_face(faces: Sequence[PhotoFace], how: str) -> PhotoFace | None:
    """The face that labels the photo: ``labels.pick_label_face`` by ``how`` (``label_face``) among
    the eligible ``faces``; None when no face is eligible (the photo has status ``no_face``)."""
    candidates = [face for face in faces if face.eligible]
    if not candidates:
        return None
    chosen = pick_label_face([face.box() for face in candidates], how)
    return next(face for face in candidates if face.index == chosen["face_index"])
