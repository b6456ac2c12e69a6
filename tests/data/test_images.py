"""Image conversion: any file becomes the model's pixels the way its data set's were made."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalearn_cli.data import image_format
from metalearn_cli.data.images import ImageFormat, read_class_folders, read_image
from metalearn_cli.errors import DataError


def test_any_size_and_mode_becomes_the_formats_shape(tmp_path):
    fmt = ImageFormat(channels=3, size=12)
    for mode, size in (("RGBA", (40, 20)), ("L", (7, 9)), ("P", (30, 30)), ("1", (16, 16))):
        path = tmp_path / f"{mode}.png"
        Image.new(mode, size).save(path)
        out = read_image(path, fmt)
        assert out.shape == (3, 12, 12) and out.dtype == torch.uint8


def test_invert_and_grey_follow_the_format():
    white = Image.new("RGB", (10, 10), (255, 255, 255))
    assert read_image(white, ImageFormat(1, 5)).unique().tolist() == [255]
    assert read_image(white, ImageFormat(1, 5, invert=True)).unique().tolist() == [0]


def test_omniglot_format_matches_its_data_set_conversion():
    """A user's Omniglot-style drawing (dark on white) is converted like the embedded data (bright strokes)."""
    fmt = image_format({"name": "omniglot"})
    assert fmt == ImageFormat(1, 28, "lanczos", True)
    from metalearn_cli.data.omniglot_files import convert

    drawing = Image.new("L", (105, 105), 255)
    drawing.paste(0, (40, 10, 60, 95))
    buf = io.BytesIO()
    drawing.save(buf, format="PNG")
    assert np.array_equal(read_image(drawing, fmt)[0].numpy(), convert(buf.getvalue(), "x"))
    assert read_image(drawing, fmt).float().mean() > 0  # strokes are bright


def test_corrupt_and_missing_files_are_one_line(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot decode image .*bad.png"):
        read_image(bad, ImageFormat(1, 8))
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "nope.png", ImageFormat(1, 8))



def test_an_unreadable_image_says_so_not_that_it_is_corrupt(tmp_path, monkeypatch):
    from PIL import Image

    def denied(*args, **kwargs):  # chmod 000 does not stop root, who runs the tests here
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(DataError, match=r"cannot read image .*img 0.png: permission denied; make it readable"):
        read_image(tmp_path / "img 0.png", ImageFormat(1, 8))


def test_class_folders_allow_different_counts_and_reject_empty_classes(tmp_path, caplog):
    for name, count in (("b", 3), ("a", 1)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("L", (8, 8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    (tmp_path / "b" / "notes.txt").write_text("x")  # skipped, and said
    (tmp_path / "b" / "nested").mkdir()
    names, files, stacks = read_class_folders(tmp_path, ImageFormat(1, 4), "support")
    assert names == ["a", "b"] and [s.shape[0] for s in stacks] == [1, 3]
    said = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(said) == 1 and "skipped 2 entries that are not an image file (nested, notes.txt)" in said[0]
    (tmp_path / "b_link").symlink_to(tmp_path / "b", target_is_directory=True)  # one class counted twice: refused
    with pytest.raises(DataError, match="class folders .*b and .*b_link are one folder"):
        read_class_folders(tmp_path, ImageFormat(1, 4), "support")
    (tmp_path / "b_link").unlink()
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match="class folder .*c holds no images"):
        read_class_folders(tmp_path, ImageFormat(1, 4), "support")


def _drawing(size: int = 24) -> np.ndarray:
    """A dark cross on white, as a drawing tool would draw it."""
    pixels = np.full((size, size), 255, dtype=np.uint8)
    pixels[size // 2 - 1 : size // 2 + 2, 3:-3] = 0
    pixels[3:-3, size // 2 - 1 : size // 2 + 2] = 0
    return pixels


def _transparent(mode: str, tmp_path) -> "Path":
    """The drawing with its white background made transparent, saved as a real PNG in ``mode``; the
    colour under the transparency is black, as many tools leave it."""
    stroke = _drawing() == 0
    alpha = np.where(stroke, 255, 0).astype(np.uint8)
    black = np.zeros_like(alpha)
    if mode == "RGBA":
        img = Image.fromarray(np.stack([black, black, black, alpha], -1), "RGBA")
    elif mode == "LA":
        img = Image.fromarray(np.stack([black, alpha], -1), "LA")
    elif mode == "P":  # palette: index 0 transparent white-ish, index 1 opaque black
        img = Image.fromarray(stroke.astype(np.uint8), "P")
        img.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)
        img.info["transparency"] = 0
    else:  # "L" with a transparency key: grey 0 under the background, strokes grey 1
        img = Image.fromarray(np.where(stroke, 1, 0).astype(np.uint8), "L")
        img.info["transparency"] = 0
    path = tmp_path / f"{mode}.png"
    img.save(path, transparency=img.info.get("transparency")) if "transparency" in img.info else img.save(path)
    with Image.open(path) as check:
        assert check.mode == mode and (mode in ("RGBA", "LA") or "transparency" in check.info)
    return path


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L"])
def test_transparent_drawings_convert_like_the_same_drawing_on_white(tmp_path, mode):
    """Strokes on a transparent background are composited onto white before conversion: the pixels
    equal the opaque drawing's, not one flat value (dropping alpha turned them all black)."""
    fmt = image_format({"name": "omniglot"})
    expected = read_image(Image.fromarray(_drawing(), "L"), fmt)
    got = read_image(_transparent(mode, tmp_path), fmt)
    assert got.float().std() > 50  # strokes and background
    assert (got.int() - expected.int()).abs().max() <= 1, mode


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_16_and_32_bit_grey_images_convert_like_the_same_8_bit_image(tmp_path, mode):
    """PIL's own conversion clips values over 255 to white: a 16-bit PNG's strokes would vanish."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    wide = {"I;16": grey.astype(np.uint16) * 257, "I": grey.astype(np.int32) * 257, "F": grey.astype(np.float32) / 255}[mode]
    image = Image.fromarray(wide)
    assert image.mode == mode
    if mode == "I;16":  # from a real 16-bit PNG file, as a user's would be
        image.save(tmp_path / "wide.png")
        image = tmp_path / "wide.png"
    fmt = ImageFormat(channels=1, size=28)
    assert torch.equal(read_image(image, fmt), read_image(Image.fromarray(grey), fmt))


def test_a_folder_given_as_an_image_is_called_a_folder(tmp_path):
    (tmp_path / "support").mkdir()
    with pytest.raises(DataError, match=r"support is a folder, not an image; give its image files"):
        read_image(tmp_path / "support", ImageFormat(1, 28))


def test_an_image_over_pils_warning_limit_is_read_and_named(tmp_path, monkeypatch, caplog):
    """PIL's own DecompressionBombWarning names PIL's source file; the warning names the image."""
    from PIL import Image

    from metalearn_cli.data.images import ImageFormat, read_image

    Image.new("L", (20, 20), 128).save(tmp_path / "large.png")
    from metalearn_cli.data import images

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 pixels: over the warning limit, under the error's 600
    monkeypatch.setattr(images, "LARGE_SAID", [])
    with caplog.at_level("WARNING"):
        for _ in range(3):
            assert read_image(tmp_path / "large.png", ImageFormat(1, 8, "bilinear")).shape == (1, 8, 8)
    assert f"image {tmp_path / 'large.png'} has 20 x 20 pixels, over PIL's decompression-bomb warning limit" in caplog.text
    assert caplog.text.count("decompression-bomb") == 1  # once, as PIL's own warning is
