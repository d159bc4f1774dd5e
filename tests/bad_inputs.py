"""Files a real photo folder contains sooner or later: broken, odd and hostile ones.

Each writer returns the file name and the status the pipeline must give it.
"""
from __future__ import annotations

import io
import os
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


def write_hostile_entries(folder: Path, outside_photo: Path) -> tuple[dict[str, str], dict[str, int]]:
    """File-system entries a source folder holds sooner or later that are not plain photo files.

    Returns ({name: status} for every entry named like a photo, {skip reason: count} for the others).
    A symbolic link to a real photo is that photo; the rest must never be opened (a FIFO would block
    its reader forever) yet get a row with a status."""
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "link_dangling.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "link_loop.jpg").symlink_to(folder / "link_loop.jpg")
    (folder / "link_to_photo.jpg").symlink_to(outside_photo)
    os.mkfifo(folder / "pipe.jpg")
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(folder / "socket.png"))  # the socket file stays after the socket closes
    photo = Image.open(outside_photo).convert("RGB")
    photo.rotate(90, expand=True).save(folder / "back\\slash.jpg")  # another photo: not a near duplicate
    photo.save(folder / "animation.gif")
    photo.save(folder / "scan.tiff")
    photo.save(folder / "bitmap.bmp")
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    (folder / "notes.txt").write_text("a caption file, not a photo\n")
    (folder / "README").write_text("no extension\n")
    (folder / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    rows = {
        "link_dangling.jpg": "broken_link", "link_loop.jpg": "broken_link", "link_to_photo.jpg": "ok",
        "back\\slash.jpg": "ok",  # a backslash is an ordinary character of a POSIX name
        "pipe.jpg": "not_a_file", "socket.png": "not_a_file", "animation.gif": "unsupported",
        "scan.tiff": "unsupported", "bitmap.bmp": "unsupported", "phone.heic": "unsupported",
    }
    return rows, {"extension .txt": 1, "no extension": 1, "extension .mp4": 1}


def write_unreadable_entries(folder: Path, photo: Path) -> tuple[dict[str, str], dict[str, int]]:
    """A photo and a folder this process may not read (mode 000): readable by privileged root only,
    so ``without_file_privileges`` runs the pipeline on them."""
    (folder / "locked").mkdir(parents=True)
    for target in (folder / "unreadable.jpg", folder / "locked" / "inside.jpg"):
        target.write_bytes(photo.read_bytes())
        target.chmod(0)
    (folder / "locked").chmod(0)
    return {"unreadable.jpg": "unreadable"}, {"unreadable folder": 1}


def without_file_privileges() -> None:
    """``preexec_fn`` that makes a child process as bound by file modes as any deployment's user: as
    root, drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set (so exec does not give
    them back); as any other user there is nothing to drop."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "cannot drop file capabilities (needs CAP_SETPCAP)")


def write_degenerate_photos(folder: Path, real_photo: Path) -> dict[str, str]:
    """Valid but degenerate photos: a side of one pixel (a 102-byte 1x4000 PNG), in the modes a resize
    converts, stored sideways under EXIF, animated, plus a truncated and a huge-declared one.

    Returns {file name: the status resize must give it}; annotate finds no face in the ``ok`` ones."""
    folder.mkdir(parents=True, exist_ok=True)
    gray = Image.new("L", (1, 4000), 128)
    gray.convert("RGB").save(folder / "thin.png", optimize=True)  # ~100 bytes: the photo
    Image.new("RGB", (4000, 1), (200, 90, 40)).save(folder / "wide.png")
    Image.new("RGB", (1, 1), (10, 200, 10)).save(folder / "one_pixel.png")
    Image.new("RGB", (1, 4000), (30, 60, 90)).convert("CMYK").save(folder / "thin_cmyk.jpg")
    Image.fromarray(np.full((4000, 1), 40_000, dtype=np.uint16)).save(folder / "thin_16bit.png")
    gray.convert("P").save(folder / "thin_palette.png")
    Image.new("RGBA", (1, 4000), (255, 0, 0, 60)).save(folder / "thin_alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 4000x1, shown 1x4000
    Image.new("RGB", (4000, 1), (90, 90, 90)).save(folder / "thin_exif_rotated.jpg", exif=exif)
    frames = [Image.open(real_photo).convert("RGB").resize((3, 900)), Image.new("RGB", (3, 900))]
    frames[0].save(folder / "thin_animated.webp", save_all=True, append_images=frames[1:], duration=100)
    frames[0].save(folder / "thin_animated.png", save_all=True, append_images=frames[1:], duration=100)
    thin = (folder / "thin.png").read_bytes()
    (folder / "thin_truncated.png").write_bytes(thin[: len(thin) // 2])
    (folder / "thin_giant.png").write_bytes(giant_png_header(1, 2_000_000_000))
    statuses = {path.name: "ok" for path in folder.iterdir()}
    return {**statuses, "thin_truncated.png": "corrupt", "thin_giant.png": "too_large"}
