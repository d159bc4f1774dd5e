import io

import numpy as np
import pytest
from PIL import Image

from emotion_pipeline.labelling.images import ImageError, decode_rgb, letterbox, load_rgb_array, open_checked
from tests.bad_inputs import write_bad_inputs, write_odd_modes
from tests.conftest import FLICKR, flickr_names

PHOTO = FLICKR / flickr_names(1)[0]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    return folder, write_bad_inputs(folder, PHOTO)


@pytest.mark.parametrize("name", [
    "bad_empty.jpg", "bad_truncated.jpg", "bad_not_an_image.jpg", "bad_bitmap_named.JPG", "bad_giant.png",
])
def test_bad_files_get_a_status_and_a_message(bad, name):
    folder, expected = bad
    with pytest.raises(ImageError) as err:
        image, _ = open_checked((folder / name).read_bytes(), max_pixels=50_000_000)
        decode_rgb(image)
    assert err.value.status == expected[name]
    assert str(err.value)


@pytest.mark.parametrize("name", [
    "mode_gray.jpg", "mode_cmyk.jpg", "mode_palette.png", "mode_rgba.png", "mode_16bit.png",
    "mode_photo.WEBP", "mode_exif_rotated.jpg",
])
def test_every_mode_becomes_8bit_rgb(tmp_path, name):
    write_odd_modes(tmp_path, PHOTO)
    image, info = open_checked((tmp_path / name).read_bytes(), max_pixels=50_000_000)
    rgb = decode_rgb(image)
    assert rgb.mode == "RGB"
    assert np.asarray(rgb).std() > 10  # real content, not a blank or clipped-white image


def test_exif_orientation_is_applied(tmp_path):
    write_odd_modes(tmp_path, PHOTO)
    original = Image.open(PHOTO)
    image, info = open_checked((tmp_path / "mode_exif_rotated.jpg").read_bytes(), max_pixels=10**8)
    assert (info.width, info.height) == original.size  # stored as is
    assert decode_rgb(image).size == original.size[::-1]  # displayed rotated


def test_letterbox_keeps_the_whole_photo_and_pads():
    wide = Image.new("RGB", (400, 100), (255, 0, 0))
    out = letterbox(wide, 224)
    pixels = np.asarray(out)
    assert out.size == (224, 224)
    assert pixels[112, 0].tolist() == [255, 0, 0] and pixels[112, 223].tolist() == [255, 0, 0]
    assert pixels[0, 112].tolist() == [0, 0, 0] and pixels[223, 112].tolist() == [0, 0, 0]


@pytest.mark.parametrize("size", [(2000, 1000), (500, 333), (333, 500)])
def test_draft_decoding_reduces_jpegs_but_never_below_the_letterboxed_size(size):
    """The photo is fitted into 224x224: its long side must stay >= 224, its short side >= its fit."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, format="JPEG")
    image, _ = open_checked(buffer.getvalue(), max_pixels=10**8)
    decoded = decode_rgb(image, draft_size=224)
    assert decoded.size[0] <= -(-size[0] // 2) and decoded.size[1] <= -(-size[1] // 2)  # at 1/2 or less
    fit = 224 / max(size)
    assert decoded.size[0] >= size[0] * fit and decoded.size[1] >= size[1] * fit


def test_large_photos_are_downscaled_for_detection_with_the_scale():
    buffer = io.BytesIO()
    Image.new("RGB", (3200, 1600), (10, 20, 30)).save(buffer, format="JPEG")
    array, scale = load_rgb_array(buffer.getvalue(), max_pixels=10**8, max_side=1600)
    assert array.shape == (800, 1600, 3) and scale == 0.5
