"""Decode any photo a user may drop in the source folder into a clean RGB image, or say why not.

Every failure becomes an ``ImageError`` with a status that ends up in the tables:

    empty        zero bytes
    corrupt      not a decodable image (truncated, garbage, a text file named .jpg)
    unsupported  a real image in a format the pipeline does not take (GIF, TIFF, BMP, ...)
    too_large    declared dimensions above ``max_pixels`` (never decoded: a decompression bomb guard)
    missing      the file disappeared after discovery listed it
    broken_link, not_a_file, unreadable
                 the entry cannot be read as a file (``storage.ENTRY_PROBLEMS``): never opened as a photo
    failed       not an ``ImageError``: a step raised something else on this photo (``photo_boundary``)
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from emotion_pipeline.core.errors import ImageError  # re-exported: its home is core.errors
from emotion_pipeline.core.storage import Storage, entry_problem

MAX_8_BIT = 255
SUPPORTED_FORMATS = {"JPEG", "MPO", "PNG", "WEBP"}  # MPO: multi-picture JPEGs written by cameras
# Photo formats Pillow cannot even identify without a plugin: named so, they are 'unsupported', not 'corrupt'.
UNIDENTIFIABLE_FORMATS = {".heic": "HEIC", ".heif": "HEIF"}


@dataclass(frozen=True)
class SourceInfo:
    width: int  # as stored in the file, before EXIF orientation
    height: int
    format: str
    mode: str
    upright_width: int  # as displayed, after EXIF orientation: the frame of every face box
    upright_height: int


def read_photo(storage: Storage, key: str) -> bytes:
    """The bytes of one source photo. An entry that cannot be read (gone, a broken link, a pipe, no
    permission) is an ``ImageError`` with its status, so one bad entry never stops a shard. Errors of
    the whole storage (a missing bucket, a denied bucket) are ``StorageError`` and do stop it."""
    try:
        return storage.read_bytes(key)
    except FileNotFoundError as err:
        raise ImageError("missing", f"source file disappeared: {err}") from err
    except OSError as err:
        raise ImageError(entry_problem(err), f"cannot read {key}: {err.strerror or err}") from err


def open_checked(data: bytes, max_pixels: int, name: str = "") -> tuple[Image.Image, SourceInfo]:
    """Open (header only) and check format and declared size before any pixel is decoded. ``name``
    (the file name) only words the error for formats Pillow cannot identify (HEIC)."""
    if not data:
        raise ImageError("empty", "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError("too_large", f"declared size too large to decode safely: {err}") from err
    except UnidentifiedImageError as err:
        known = next((f for ext, f in UNIDENTIFIABLE_FORMATS.items() if name.lower().endswith(ext)), None)
        if known:
            raise ImageError("unsupported", f"format {known} is not one of JPEG, PNG, WEBP (or unreadable)") from err
        raise ImageError("corrupt", "not a recognisable image (unreadable header)") from err
    except Exception as err:  # PIL raises many types for garbage headers
        raise ImageError("corrupt", f"unreadable image header: {err}") from err
    turned = _orientation(image) in (5, 6, 7, 8)  # a quarter turn: width and height swap
    info = SourceInfo(image.width, image.height, image.format or "", image.mode,
                      image.height if turned else image.width, image.width if turned else image.height)
    if info.format not in SUPPORTED_FORMATS:
        raise ImageError("unsupported", f"format {info.format or 'unknown'} is not one of JPEG, PNG, WEBP")
    if info.width * info.height > max_pixels:
        raise ImageError(
            "too_large", f"{info.width}x{info.height} is over the limit of {max_pixels:,} pixels"
        )
    return image, info


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright), read from the header the way ``exif_transpose`` does."""
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block: decode_rgb leaves such a photo as stored
        return 1


def letterbox_box(box: tuple[float, float, float, float], width: float, height: float,
                  side: int) -> tuple[float, float, float, float]:
    """A box (x, y, w, h) in the upright photo's pixels -> (left, top, right, bottom) on its
    ``letterbox`` copy of ``side`` pixels (where the dashboard draws it)."""
    scale = side / max(width, height)
    dx, dy = (side - width * scale) / 2, (side - height * scale) / 2
    x, y, w, h = box
    return dx + x * scale, dy + y * scale, dx + (x + w) * scale, dy + (y + h) * scale


def decode_rgb(image: Image.Image, draft_size: int | None = None) -> Image.Image:
    """Decode pixels, apply EXIF orientation, convert any mode to 8-bit RGB.

    ``draft_size`` lets libjpeg decode at a reduced scale (1/2, 1/4, 1/8) while the long side stays
    at least that large: several times faster when the output is a small thumbnail anyway.
    """
    try:
        if draft_size and image.format in ("JPEG", "MPO"):
            # Pillow keeps both sides at or above the requested box, so ask for the photo's own
            # shape fitted into draft_size (asking for a square would rule out any reduction for
            # a 500x333 photo, whose short side halved is below draft_size).
            fit = draft_size / max(image.size)
            image.draft("RGB", (max(1, math.ceil(image.width * fit)), max(1, math.ceil(image.height * fit))))
        image.load()
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # a malformed EXIF block must not lose an otherwise good photo
            pass
        return to_rgb(image)
    except ImageError:
        raise
    except Exception as err:  # truncated data, bad huffman tables, ...
        raise ImageError("corrupt", f"cannot decode image: {err}") from err


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale: scale to 8 bits instead of clipping everything to white.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > MAX_8_BIT else float(MAX_8_BIT)
        image = Image.fromarray(np.clip(values / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def letterbox(image: Image.Image, size: int) -> Image.Image:
    """Fit the whole photo into size x size, keeping its aspect ratio, padding with black.

    Padding (not cropping) because faces in natural photos are often near the edges.
    """
    return ImageOps.pad(image, (size, size), method=Image.Resampling.BICUBIC, color=(0, 0, 0))


def to_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def load_rgb_array(data: bytes, max_pixels: int, max_side: int | None = None) -> tuple[np.ndarray, float]:
    """Decode to an RGB uint8 array, downscaled so the long side is at most ``max_side``.

    Returns the array and the scale applied (1.0 when untouched), to map boxes back to the original.
    """
    image, _ = open_checked(data, max_pixels)
    rgb = decode_rgb(image)  # full decode: box coordinates must map back exactly
    scale = 1.0
    if max_side and max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        rgb = rgb.resize(scaled_size(rgb.size, scale), Image.Resampling.BICUBIC)
    return np.asarray(rgb), scale


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """(width, height) times ``scale``, rounded, and never below one pixel: a 1x4000 photo scaled to
    a long side of 1600 is 1x1600, not the 0x1600 Pillow refuses."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
