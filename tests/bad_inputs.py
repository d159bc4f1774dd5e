"""Files a real photo folder contains sooner or later: broken, odd and hostile ones.

Each writer returns the file name and the status the pipeline must give it.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def giant_png_header(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header declares a huge size: must be refused before decoding."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # IHDR starts after the 8-byte signature + 4-byte length + 4-byte type.
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def write_bad_inputs(folder: Path, real_photo: Path) -> dict[str, str]:
    """Write the bad inputs into ``folder``; returns {file name: expected status}."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = real_photo.read_bytes()
    bmp = io.BytesIO()
    Image.open(real_photo).convert("RGB").save(bmp, format="BMP")
    files = {
        "bad_empty.jpg": (b"", "empty"),
        "bad_truncated.jpg": (photo[: len(photo) // 3], "corrupt"),
        "bad_not_an_image.jpg": (b"<html>this is a web page saved with a .jpg name</html>\n" * 20, "corrupt"),
        "bad_bitmap_named.JPG": (bmp.getvalue(), "unsupported"),
        "bad_giant.png": (giant_png_header(), "too_large"),
        "bad_duplicate copy.jpeg": (photo, "duplicate"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: status for name, (_, status) in files.items()}


def write_odd_modes(folder: Path, real_photos: Path | list[Path]) -> list[str]:
    """Valid photos in every mode a resize must convert (all must come out ``ok``).

    Given several photos, each mode gets the next one: copies of one photo in seven modes are near
    duplicates of each other, which the dedupe stage (rightly) reports as such."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = real_photos if isinstance(real_photos, list) else [real_photos]
    written = []

    def save(name: str, convert, **kwargs) -> None:
        rgb = Image.open(photos[len(written) % len(photos)]).convert("RGB")
        convert(rgb).save(folder / name, **kwargs)
        written.append(name)

    save("mode_gray.jpg", lambda rgb: rgb.convert("L"))
    save("mode_cmyk.jpg", lambda rgb: rgb.convert("CMYK"))
    save("mode_palette.png", lambda rgb: rgb.convert("P"))
    save("mode_rgba.png", lambda rgb: rgb.convert("RGBA"))
    save("mode_16bit.png", lambda rgb: Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257))
    save("mode_photo.WEBP", lambda rgb: rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    save("mode_exif_rotated.jpg", lambda rgb: rgb, exif=exif)
    return written
