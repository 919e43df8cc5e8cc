"""Tests for jaxstyle.images: loading every kind of file, refusing bad ones, saving, resizing.

Every input file is generated here, in tmp_path, with Pillow or by hand.
"""

from __future__ import annotations

import io
import os
import pathlib
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, features

from jaxstyle import images
from jaxstyle.errors import JaxstyleError, UsageError

HALF_8BIT = 0.5 / 255  # one rounding step of an 8-bit file
FLOAT_EPS = 1e-6  # float32 arithmetic on values in [0, 1]


def _random_uint8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _smooth_image(height=48, width=64):
    """A smooth, colourful float64 image in [0, 1]: what lossy codecs handle well."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [x / (width - 1), y / (height - 1), 0.5 + 0.4 * np.sin(x / 9.0) * np.cos(y / 7.0)], axis=-1
    )


def _save(tmp_path, name, im, **options):
    path = tmp_path / name
    im.save(path, **options)
    return path


def _refused(path, *, match=None, **kwargs):
    """load_image(path) raises UsageError with a one-line message naming the file."""
    with pytest.raises(UsageError) as info:
        images.load_image(path, **kwargs)
    message = str(info.value)
    assert pathlib.Path(path).name in message
    assert "\n" not in message
    if match is not None:
        assert match in message, message
    return message


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _no_temp_files(directory: pathlib.Path, expected: set[str]) -> bool:
    return {p.name for p in directory.iterdir()} == expected


# ----------------------------------------------------------------------------
# Loading what Pillow can open


def test_rgb_png_roundtrip(tmp_path):
    pixels = _random_uint8((32, 48, 3))
    path = _save(tmp_path, "rgb.png", Image.fromarray(pixels))
    loaded = images.load_image(path)
    assert loaded.dtype == np.float32 and loaded.shape == (32, 48, 3)
    assert loaded.flags.c_contiguous
    np.testing.assert_allclose(loaded, pixels / 255, rtol=0, atol=HALF_8BIT)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_is_repeated_into_rgb(tmp_path, mode):
    gray = _random_uint8((20, 30), seed=1)
    im = Image.fromarray(gray).convert(mode)
    path = _save(tmp_path, f"gray_{mode}.png", im)
    loaded = images.load_image(path)
    expected = np.asarray(im.convert("L"), dtype=np.float64) / 255
    for channel in range(3):
        np.testing.assert_allclose(loaded[..., channel], expected, rtol=0, atol=HALF_8BIT)


def test_palette_with_transparency_is_composited_over_white(tmp_path):
    im = Image.new("P", (16, 16), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)  # 0 red, 1 green
    im.paste(1, (0, 0, 16, 8))  # top half green, then made transparent
    path = _save(tmp_path, "palette.png", im, transparency=1)
    assert Image.open(path).mode == "P"
    loaded = images.load_image(path)
    np.testing.assert_allclose(loaded[:8], np.ones((8, 16, 3)), rtol=0, atol=FLOAT_EPS)
    red = np.broadcast_to([1.0, 0.0, 0.0], (8, 16, 3))
    np.testing.assert_allclose(loaded[8:], red, rtol=0, atol=FLOAT_EPS)


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:, :8] = (255, 0, 0, 128)  # half-transparent red: pink over white
    rgba[:, 8:12] = (0, 0, 255, 255)  # opaque blue stays blue
    rgba[:, 12:] = (0, 0, 0, 0)  # transparent black is white
    path = _save(tmp_path, "rgba.png", Image.fromarray(rgba))
    loaded = images.load_image(path)
    a = 128 / 255
    pink = [1.0, 1 - a, 1 - a]  # (1, 0, 0) * a + 1 * (1 - a) = (1, 0.498, 0.498)
    blue = [0.0, 0.0, 1.0]
    np.testing.assert_allclose(loaded[:, :8], np.broadcast_to(pink, (16, 8, 3)), rtol=0, atol=FLOAT_EPS)
    np.testing.assert_allclose(loaded[:, 8:12], np.broadcast_to(blue, (16, 4, 3)), rtol=0, atol=FLOAT_EPS)
    np.testing.assert_allclose(loaded[:, 12:], np.ones((16, 4, 3)), rtol=0, atol=FLOAT_EPS)


def test_la_is_composited_over_white(tmp_path):
    la = np.zeros((16, 16, 2), dtype=np.uint8)
    la[..., 0] = 40
    la[..., 1] = 200
    path = _save(tmp_path, "la.png", Image.fromarray(la, mode="LA"))
    assert Image.open(path).mode == "LA"
    a = 200 / 255
    expected = 40 / 255 * a + (1 - a)
    loaded = images.load_image(path)
    np.testing.assert_allclose(loaded, np.full((16, 16, 3), expected), rtol=0, atol=FLOAT_EPS)


def test_16bit_png_keeps_its_precision(tmp_path):
    ramp = np.arange(65536, dtype=np.uint16).reshape(16, 4096)  # every 16-bit level once
    path = _save(tmp_path, "ramp16.png", Image.fromarray(ramp))
    assert Image.open(path).mode in ("I;16", "I")  # Pillow < 10.1 opens it as "I"
    loaded = images.load_image(path)
    np.testing.assert_allclose(loaded[..., 1], ramp / 65535, rtol=0, atol=1e-4)
    np.testing.assert_allclose(loaded[..., 0], ramp / 65535, rtol=0, atol=1e-7)  # in fact exact in float32
    assert len(np.unique(loaded)) == 65536  # not squeezed through 8 bits


@pytest.mark.parametrize("dtype, top, scale", [
    (np.int32, 255, 255), (np.int32, 65535, 65535), (np.int32, 1000, 65535),  # mode I: 8-bit, 16-bit values
    (np.float32, 1.0, 1), (np.float32, 255.0, 255), (np.float32, 4000.0, 65535),  # mode F: [0, 1], 8, 16 bits
])
def test_32bit_integer_and_float_grayscale_are_read_by_their_value_range(tmp_path, dtype, top, scale):
    """32-bit TIFFs carry no range: values up to 255 are 8-bit (not a nearly black 16-bit image), and so on."""
    values = np.linspace(0, top, 16 * 16).reshape(16, 16).astype(dtype)
    path = _save(tmp_path, "gray32.tif", Image.fromarray(values))
    assert Image.open(path).mode == ("I" if dtype == np.int32 else "F")
    loaded = images.load_image(path)
    np.testing.assert_allclose(loaded[..., 1], values.astype(np.float64) / scale, rtol=1e-6, atol=1e-7)
    assert loaded.max() == pytest.approx(top / scale, rel=1e-6)  # a 0-255 image is white where it is 255


@pytest.mark.parametrize("values, words", [
    (np.linspace(-1000, 2000, 256).astype(np.int32), "from -1000 to 2000"),
    (np.linspace(0, 70000, 256).astype(np.int32), "outside 0-255 or 0-65535"),
    (np.linspace(-0.5, 1.0, 256).astype(np.float32), "from -0.5 to 1"),
])
def test_32bit_images_outside_every_range_are_refused(tmp_path, values, words):
    path = _save(tmp_path, "gray32.tif", Image.fromarray(values.reshape(16, 16)))
    _refused(path, match=words)


def test_float_image_with_nan_is_refused(tmp_path):
    floats = np.full((16, 16), 0.5, dtype=np.float32)
    floats[3, 3] = np.nan
    path = _save(tmp_path, "nan.tif", Image.fromarray(floats))
    _refused(path, match="NaN")


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    cmyk = np.zeros((32, 32, 4), dtype=np.uint8)
    cmyk[:16, :16] = (255, 0, 0, 0)  # cyan
    cmyk[:16, 16:] = (0, 255, 0, 0)  # magenta
    cmyk[16:, :16] = (0, 0, 255, 0)  # yellow
    cmyk[16:, 16:] = (0, 0, 0, 255)  # black
    im = Image.frombytes("CMYK", (32, 32), cmyk.tobytes())
    path = _save(tmp_path, "cmyk.jpg", im, quality=95)
    assert Image.open(path).mode == "CMYK"
    loaded = images.load_image(path)
    expected = {(8, 8): [0, 1, 1], (8, 24): [1, 0, 1], (24, 8): [1, 1, 0], (24, 24): [0, 0, 0]}
    for (y, x), rgb in expected.items():
        np.testing.assert_allclose(loaded[y, x], rgb, rtol=0, atol=0.1)  # JPEG is lossy


@pytest.mark.skipif(not features.check("littlecms2"), reason="Pillow built without LittleCMS")
def test_lab_tiff_loads_as_rgb_without_alpha(tmp_path):
    from PIL import ImageCms

    srgb_to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    lab = ImageCms.applyTransform(Image.new("RGB", (16, 16), (200, 30, 60)), srgb_to_lab)
    path = _save(tmp_path, "lab.tif", lab)
    assert Image.open(path).mode == "LAB"  # its "A" is a colour axis, not alpha
    loaded = images.load_image(path)
    np.testing.assert_allclose(loaded[5, 5], np.array([200, 30, 60]) / 255, rtol=0, atol=3 / 255)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def test_exif_orientation_6_jpeg_is_turned_upright(tmp_path):
    # Stored 32 high x 48 wide: red top-left quadrant, blue elsewhere. Orientation 6
    # means "rotate 90 degrees clockwise to display": red ends up top-right.
    stored = np.zeros((32, 48, 3), dtype=np.uint8)
    stored[...] = (0, 0, 255)
    stored[:16, :24] = (255, 0, 0)
    path = _save(tmp_path, "rotated.jpg", Image.fromarray(stored), quality=95, exif=_exif(6))
    loaded = images.load_image(path)
    assert loaded.shape == (48, 32, 3)
    np.testing.assert_allclose(loaded[12, 24], [1, 0, 0], rtol=0, atol=0.1)  # top-right: red
    for y, x in [(12, 8), (36, 8), (36, 24)]:
        np.testing.assert_allclose(loaded[y, x], [0, 0, 1], rtol=0, atol=0.1)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
    pixels = _random_uint8((16, 24, 3), seed=orientation)
    path = _save(tmp_path, f"o{orientation}.png", Image.fromarray(pixels), exif=_exif(orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)), dtype=np.float64) / 255
    np.testing.assert_allclose(images.load_image(path), expected, rtol=0, atol=FLOAT_EPS)


# ----------------------------------------------------------------------------
# Refusing what is not a usable image


def _valid_png_bytes(shape=(24, 32, 3)):
    buffer = io.BytesIO()
    Image.fromarray(_random_uint8(shape, seed=2)).save(buffer, "PNG")
    return buffer.getvalue()


def _valid_jpeg_bytes(shape=(24, 32, 3)):
    buffer = io.BytesIO()
    Image.fromarray(_random_uint8(shape, seed=3)).save(buffer, "JPEG", quality=90, exif=_exif(6))
    return buffer.getvalue()


def test_truncated_png_is_refused(tmp_path):
    data = _valid_png_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    _refused(path, match="truncated or corrupt")


def test_truncated_jpeg_is_refused(tmp_path):
    data = _valid_jpeg_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    _refused(path, match="truncated or corrupt")


def test_truncated_jpeg_is_refused_even_if_pillow_was_told_to_allow_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = _valid_jpeg_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    _refused(path, match="truncated or corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored afterwards


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _refused(path, match="empty")


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(4).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _refused(path, match="not an image")


def test_directory_is_refused(tmp_path):
    path = tmp_path / "folder.png"
    path.mkdir()
    _refused(path, match="directory")


def test_missing_file_is_refused(tmp_path):
    _refused(tmp_path / "missing.png", match="does not exist")


def test_too_small_image_is_refused(tmp_path):
    path = _save(tmp_path, "tiny.png", Image.fromarray(_random_uint8((15, 40, 3))))
    message = _refused(path, match="too small for the network")
    assert "40x15" in message and str(images.MIN_SIDE) in message


def test_image_over_the_pixel_limit_is_refused(tmp_path):
    path = _save(tmp_path, "big.png", Image.fromarray(_random_uint8((64, 64, 3))))
    message = _refused(path, max_pixels=3000, match="more than the limit of 3000")
    assert "64x64" in message
    assert images.load_image(path, max_pixels=4096).shape == (64, 64, 3)  # the limit is inclusive


def test_png_claiming_a_huge_size_is_refused_before_decoding(tmp_path):
    # A hand-made PNG whose IHDR claims 100000 x 100000 RGB pixels (30 GB decoded)
    # followed by a tiny IDAT; it must be refused from the header alone.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + _png_chunk(b"IEND", b"")
    )
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    start = time.perf_counter()
    message = _refused(path, match="than the limit")
    assert time.perf_counter() - start < 1.0
    assert "10000000000" in message
    # Also over a limit that Pillow's own check does not reach (only ours does).
    _refused(path, max_pixels=10**10 - 1, match="100000x100000")


def test_bad_max_pixels_is_refused(tmp_path):
    path = _save(tmp_path, "ok.png", Image.fromarray(_random_uint8((16, 16, 3))))
    with pytest.raises(UsageError, match="`max_pixels` must be at least 1, got 0"):
        images.load_image(path, max_pixels=0)


def _tiff16_bytes(shape=(20, 24, 3)):
    return images._encode_tiff16(_random_uint8(shape, seed=5) / 255, {"k": "v"})


def _gif_bytes(shape=(24, 32, 3)):
    buffer = io.BytesIO()
    Image.fromarray(_random_uint8(shape, seed=6)).save(buffer, "GIF")
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about some corrupt metadata
def test_fuzzed_files_load_or_raise_usage_error(tmp_path):
    """~240 deterministic corruptions: each loads as a valid image or raises UsageError."""
    rng = np.random.default_rng(1234)
    seeds = {
        "png": _valid_png_bytes(),
        "jpg": _valid_jpeg_bytes(),  # with an EXIF block
        "tif": _tiff16_bytes(),  # read by the full-precision path
        "gif": _gif_bytes(),
    }
    outcomes = {"loaded": 0, "refused": 0}
    for fmt, original in seeds.items():
        for case in range(60):
            data = bytearray(original)
            if case % 3 == 0:
                data = data[: rng.integers(1, len(data))]
            else:
                for _ in range(rng.integers(1, 9)):
                    data[rng.integers(len(data))] = rng.integers(256)
            path = tmp_path / f"fuzz{case}.{fmt}"
            path.write_bytes(bytes(data))
            try:
                loaded = images.load_image(path)
            except UsageError as e:
                assert "\n" not in str(e) and path.name in str(e)
                outcomes["refused"] += 1
                continue
            assert loaded.dtype == np.float32 and loaded.ndim == 3 and loaded.shape[-1] == 3
            assert min(loaded.shape[:2]) >= images.MIN_SIDE
            assert np.isfinite(loaded).all() and loaded.min() >= 0 and loaded.max() <= 1
            outcomes["loaded"] += 1
    assert outcomes["loaded"] > 0 and outcomes["refused"] > 0  # the fuzzing reaches both outcomes


# ----------------------------------------------------------------------------
# Saving


@pytest.mark.parametrize(
    "name, atol_max, atol_mean",
    [
        ("out.png", HALF_8BIT + FLOAT_EPS, None),
        ("out.tif", 0.5 / 65535 + FLOAT_EPS, None),  # 16 bits per channel
        ("out.tiff", 0.5 / 65535 + FLOAT_EPS, None),
        ("out.jpg", 0.1, 0.01),  # lossy: bounds on the worst and the mean error
        ("out.JPEG", 0.1, 0.01),
        ("out.webp", 0.15, 0.01),
    ],
)
def test_save_and_load_roundtrip(tmp_path, name, atol_max, atol_mean):
    if name.endswith("webp") and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    image = _smooth_image()
    images.save_image(tmp_path / name, image.astype(np.float32))
    loaded = images.load_image(tmp_path / name)
    assert loaded.shape == image.shape
    error = np.abs(loaded - image)
    assert error.max() <= atol_max, error.max()
    if atol_mean is not None:
        assert error.mean() <= atol_mean, error.mean()
    assert _no_temp_files(tmp_path, {name})


def test_tiff16_is_a_baseline_tiff_that_pillow_reads(tmp_path):
    image = _smooth_image(20, 30)
    expected16 = np.round(image * 65535).astype(np.uint16)
    path = tmp_path / "deep.tif"
    images.save_image(path, image)
    with Image.open(path) as im:
        tags = im.tag_v2
        assert im.mode == "RGB" and im.size == (30, 20)
        assert tuple(tags[258]) == (16, 16, 16)  # BitsPerSample
        assert (tags[259], tags[262], tags[277], tags[278]) == (1, 2, 3, 20)  # no compression, RGB
        # Pillow decodes 16-bit colour by keeping the high byte of each sample.
        np.testing.assert_array_equal(np.asarray(im), expected16 >> 8)
        # The strip, located through Pillow's reading of the IFD, holds the 16-bit samples.
        (offset,), (count,) = tags[273], tags[279]
    strip = path.read_bytes()[offset : offset + count]
    np.testing.assert_array_equal(np.frombuffer(strip, "<u2").reshape(20, 30, 3), expected16)


def test_16bit_tiff_keeps_levels_between_8bit_ones(tmp_path):
    image = np.full((16, 16, 3), 1000.4 / 65535)  # far from any multiple of 1/255
    images.save_image(tmp_path / "fine.tif", image)
    np.testing.assert_allclose(images.load_image(tmp_path / "fine.tif"), 1000 / 65535, rtol=0, atol=1e-7)


def test_saved_values_are_clipped_and_rounded(tmp_path):
    image = np.zeros((16, 16, 3))
    image[0, :4, 0] = [-0.5, 1.5, 0.6 / 255, 0.4 / 255]
    images.save_image(tmp_path / "clip.png", image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "clip.png"))[0, :4, 0], [0, 255, 1, 0])


METADATA = {"jaxstyle": "0.1", "style_weight": "1e5", "note": "naïve π ≈ 3.14, long " + "x" * 300}


@pytest.mark.parametrize("name", ["meta.png", "meta.jpg", "meta.webp", "meta.tif"])
def test_metadata_roundtrip(tmp_path, name):
    if name.endswith("webp") and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    images.save_image(tmp_path / name, _smooth_image(), metadata=METADATA)
    assert images.read_metadata(tmp_path / name) == METADATA


def test_png_metadata_is_stored_as_text_chunks(tmp_path):
    images.save_image(tmp_path / "meta.png", _smooth_image(), metadata=METADATA)
    with Image.open(tmp_path / "meta.png") as im:
        assert dict(im.text) == METADATA
    data = (tmp_path / "meta.png").read_bytes()
    assert b"tEXtjaxstyle\x000.1" in data  # Latin-1 text as tEXt
    assert b"iTXtnote" in data  # beyond Latin-1 (the π) as iTXt


def test_no_metadata_reads_as_empty(tmp_path):
    images.save_image(tmp_path / "plain.png", _smooth_image())
    images.save_image(tmp_path / "plain.jpg", _smooth_image())
    assert images.read_metadata(tmp_path / "plain.png") == {}
    assert images.read_metadata(tmp_path / "plain.jpg") == {}


def test_bad_metadata_key_is_a_value_error_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="metadata key"):
        images.save_image(tmp_path / "bad.png", _smooth_image(), metadata={"": "empty key"})
    assert _no_temp_files(tmp_path, set())


def test_existing_file_is_not_overwritten(tmp_path):
    path = tmp_path / "out.png"
    images.save_image(path, _smooth_image())
    before = path.read_bytes()
    with pytest.raises(UsageError, match="pass `overwrite` to replace it") as info:
        images.save_image(path, 1 - _smooth_image())
    assert "out.png" in str(info.value)
    assert path.read_bytes() == before
    images.save_image(path, 1 - _smooth_image(), overwrite=True)
    assert path.read_bytes() != before
    assert _no_temp_files(tmp_path, {"out.png"})


@pytest.mark.parametrize("name", ["out.bmp", "out", "out.png.gz"])
def test_unknown_extension_is_refused(tmp_path, name):
    calls = (
        lambda: images.save_image(tmp_path / name, _smooth_image()),
        lambda: images.check_writable(tmp_path / name),
    )
    for call in calls:
        with pytest.raises(UsageError) as info:
            call()
        message = str(info.value)
        assert name in message and all(ext in message for ext in images.SUPPORTED_OUTPUT_EXTENSIONS)
    assert _no_temp_files(tmp_path, set())


def test_failed_encoding_writes_nothing(tmp_path):
    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    too_wide = np.full((1, 16384, 3), 0.5)  # WebP is limited to 16383 pixels a side
    with pytest.raises(JaxstyleError, match="WebP") as info:
        images.save_image(tmp_path / "wide.webp", too_wide)
    assert "wide.webp" in str(info.value) and not isinstance(info.value, UsageError)
    assert _no_temp_files(tmp_path, set())


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(JaxstyleError, match="No space left"):
        images.save_image(tmp_path / "full.png", _smooth_image())
    assert _no_temp_files(tmp_path, set())


def test_non_finite_image_is_refused_and_writes_nothing(tmp_path):
    image = _smooth_image()
    image[3, 4, 1] = np.nan
    with pytest.raises(JaxstyleError, match="1 NaN or infinite"):
        images.save_image(tmp_path / "nan.png", image)
    assert _no_temp_files(tmp_path, set())


@pytest.mark.parametrize(
    "image", [np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16)), np.zeros((16, 16, 4))]
)
def test_save_rejects_arrays_that_are_not_float_rgb(tmp_path, image):
    with pytest.raises(ValueError):
        images.save_image(tmp_path / "x.png", image)


def test_save_creates_missing_directories(tmp_path):
    path = tmp_path / "a" / "b" / "out.png"
    images.check_writable(path)
    assert not (tmp_path / "a").exists()  # the check creates nothing
    images.save_image(path, _smooth_image())
    assert path.is_file()


# ----------------------------------------------------------------------------
# check_writable


def test_check_writable_accepts_a_new_file_and_leaves_nothing(tmp_path):
    images.check_writable(tmp_path / "new.png")
    assert _no_temp_files(tmp_path, set())


def test_check_writable_refuses_existing_file_unless_overwrite(tmp_path):
    path = tmp_path / "exists.jpg"
    path.write_bytes(b"old")
    with pytest.raises(UsageError, match="pass `overwrite` to replace it"):
        images.check_writable(path)
    images.check_writable(path, overwrite=True)
    assert path.read_bytes() == b"old"


def test_check_writable_refuses_a_directory(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        images.check_writable(tmp_path / "dir.png", overwrite=True)


@pytest.mark.parametrize("below", ["out.png", "sub/out.png"])
def test_check_writable_refuses_a_path_under_a_regular_file(tmp_path, below):
    (tmp_path / "file.txt").write_text("not a directory")
    with pytest.raises(UsageError, match="not a directory") as info:
        images.check_writable(tmp_path / "file.txt" / below)
    assert "out.png" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_check_writable_refuses_an_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for path in (locked / "out.png", locked / "sub" / "out.png"):
            with pytest.raises(UsageError, match="cannot create a file in") as info:
                images.check_writable(path)
            assert "out.png" in str(info.value) and "\n" not in str(info.value)
    finally:
        locked.chmod(0o700)


def test_check_writable_reports_a_failed_probe(tmp_path, monkeypatch):
    # The same refusal as above, arranged so that it also runs as root.
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images.tempfile, "TemporaryFile", denied)
    with pytest.raises(UsageError, match="cannot create a file in .* \\(Permission denied\\)") as info:
        images.check_writable(tmp_path / "out.png")
    assert "out.png" in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------
# Resizing


@pytest.mark.parametrize(
    "shape, size, expected",
    [
        ((100, 50), 64, (64, 32)),
        ((50, 100), 64, (32, 64)),
        ((64, 64), 16, (16, 16)),
        ((1000, 10), 64, (64, 1)),  # each side at least 1
    ],
)
def test_resize_longest_shape(shape, size, expected):
    image = np.random.default_rng(7).random(shape + (3,))
    resized = images.resize_longest(image, size)
    assert resized.shape == expected + (3,) and resized.dtype == np.float32


def test_resize_to_exact_shape_stays_in_range():
    # A checkerboard makes Lanczos overshoot; the result is clipped to [0, 1].
    image = (np.indices((40, 40)).sum(axis=0) % 2).astype(np.float32)[..., None].repeat(3, axis=-1)
    resized = images.resize_to(image, (17, 23))
    assert resized.shape == (17, 23, 3) and resized.dtype == np.float32
    assert resized.min() >= 0 and resized.max() <= 1


def test_resize_keeps_constants_exactly_and_off_the_8bit_grid():
    image = np.full((30, 50, 3), 0.123456, dtype=np.float32)
    np.testing.assert_allclose(images.resize_to(image, (13, 71)), 0.123456, rtol=0, atol=1e-6)


def test_resize_reproduces_a_linear_ramp_in_the_interior():
    # Lanczos weights are symmetric and sum to one, so away from the borders a
    # linear ramp is resampled exactly: halving 64 -> 32 puts new pixel j at old
    # coordinate 2j + 0.5 (pixel centres), with value (2j + 0.5) / 63.
    ramp = np.broadcast_to(np.arange(64) / 63, (20, 64))
    image = np.stack([ramp, 1 - ramp, np.full_like(ramp, 0.25)], axis=-1)
    resized = images.resize_to(image, (20, 32))
    expected = (2 * np.arange(32) + 0.5) / 63
    interior = slice(4, 28)  # Lanczos-3 at scale 2 reaches 6 old pixels either side
    expected = np.broadcast_to(expected[interior], (20, 24))
    np.testing.assert_allclose(resized[:, interior, 0], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(resized[:, interior, 1], 1 - expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(resized[..., 2], 0.25, rtol=0, atol=1e-6)


def test_resize_to_same_shape_is_a_clipped_copy():
    image = np.random.default_rng(8).random((16, 20, 3)) * 1.2 - 0.1
    resized = images.resize_to(image, (16, 20))
    np.testing.assert_allclose(resized, np.clip(image, 0, 1), rtol=0, atol=FLOAT_EPS)


def test_image_shape_reads_the_header_upright(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 40x30, shown 30x40
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path, exif=exif)
    assert images.image_shape(path) == images.load_image(path).shape[:2] == (40, 30)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(UsageError, match="not an image"):
        images.image_shape(tmp_path / "bad.png")


# ----------------------------------------------------------------------------
# Colour: ICC profiles in, sRGB out


def test_an_embedded_icc_profile_is_converted_to_srgb(tmp_path):
    from PIL import ImageCms

    from synthetic import adobe_rgb_icc, photo

    original = (photo(48, 64) * 255).round().astype(np.uint8)
    adobe_icc = adobe_rgb_icc()
    adobe, srgb = ImageCms.ImageCmsProfile(io.BytesIO(adobe_icc)), ImageCms.createProfile("sRGB")
    in_adobe = ImageCms.profileToProfile(Image.fromarray(original), srgb, adobe)  # the same colours, Adobe's values
    in_adobe.save(tmp_path / "adobe.png", icc_profile=adobe_icc)
    ImageCms.profileToProfile(in_adobe, adobe, srgb).save(tmp_path / "converted.png")  # its converted copy
    loaded = images.load_image(tmp_path / "adobe.png")
    # Its converted copy, to 8-bit rounding; the photo itself, to the rounding of the two conversions
    # where that is well conditioned (away from black, where 8-bit gamma-2.2 values are coarse: there
    # one level of Adobe RGB spans up to 12 of sRGB).
    np.testing.assert_allclose(loaded, images.load_image(tmp_path / "converted.png"), atol=1 / 255 + 1e-6)
    bright = original >= 0.15 * 255
    np.testing.assert_allclose(loaded[bright], original[bright] / 255, atol=3 / 255)
    assert np.abs(loaded - original / 255).mean() < 1 / 255
    # Read as if it were sRGB, the same file is visibly off: the profile is what fixes it.
    assert np.abs(np.asarray(in_adobe)[bright] / 255 - original[bright] / 255).max() > 0.05
    # A profile that cannot be read is ignored, as browsers do.
    in_adobe.save(tmp_path / "broken.png", icc_profile=b"not a profile")
    np.testing.assert_array_equal(images.load_image(tmp_path / "broken.png"), np.asarray(in_adobe) / np.float32(255))


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif"])
def test_every_output_is_tagged_srgb(tmp_path, ext):
    from PIL import ImageCms

    path = tmp_path / f"out{ext}"
    images.save_image(path, np.full((20, 30, 3), 0.5, np.float32), metadata={"k": "v"})
    with Image.open(path) as im:
        if ext == ".png":
            assert im.info.get("srgb") == 0  # the sRGB chunk, perceptual intent
        else:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            assert "sRGB" in ImageCms.getProfileDescription(profile)
    assert images.read_metadata(path) == {"k": "v"}
    np.testing.assert_allclose(images.load_image(path), 0.5, atol=1 / 255)  # read back through the sRGB profile


# ----------------------------------------------------------------------------
# Transparency


@pytest.mark.parametrize("ext", [".png", ".webp", ".tif", ".jpg"])
def test_alpha_is_written_and_read_back(tmp_path, ext):
    path = tmp_path / f"out{ext}"
    rgb = np.full((16, 24, 3), 0.25, np.float32)
    alpha = np.tile(np.linspace(0, 1, 24, dtype=np.float32), (16, 1))
    images.save_image(path, rgb, alpha=alpha)
    if ext == ".jpg":  # JPEG has no alpha channel: the picture as it is
        assert images.load_alpha(path) is None
        return
    # 8-bit alpha (TIFF's 16 bits are read by Pillow at 8): half a level; WebP's alpha coder: measured 0.6.
    np.testing.assert_allclose(images.load_alpha(path), alpha, atol=1 / 255)
    # The picture read back is composited over white, as every transparent input is.
    np.testing.assert_allclose(images.load_image(path), rgb * alpha[..., None] + 1 - alpha[..., None], atol=1 / 255)
    with pytest.raises(ValueError, match="alpha must be finite, of the image's shape"):
        images.save_image(tmp_path / f"bad{ext}", rgb, alpha=alpha[:, :5])


def test_an_opaque_image_has_no_alpha(tmp_path):
    images.save_image(tmp_path / "a.png", np.zeros((16, 16, 3), np.float32))
    assert images.load_alpha(tmp_path / "a.png") is None


# ----------------------------------------------------------------------------
# 16-bit PNG


def _png(width: int, height: int, colour: int, rows: list[bytes]) -> bytes:
    """A 16-bit PNG assembled here from its definition (PNG Third Edition, section 5), independent of
    `images`: IHDR, one IDAT of the given filtered rows (each a filter byte and its samples), IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


def test_a_16bit_png_is_written_that_pillow_reads_and_is_read_back_at_full_precision(tmp_path):
    image = _smooth_image(20, 30)
    expected16 = np.round(image * 65535).astype(np.uint16)
    path = tmp_path / "deep.png"
    images.save_image(path, image, png_bits=16, metadata={"k": "v", "note": "значение"})  # iTXt
    assert path.read_bytes()[24:26] == bytes([16, 2])  # IHDR: bit depth 16, colour type RGB
    with Image.open(path) as im:  # Pillow decodes 16-bit colour by keeping the high byte of each sample
        assert im.mode == "RGB" and im.info.get("srgb") == 0
        np.testing.assert_array_equal(np.asarray(im), expected16 >> 8)
    assert images.read_metadata(path) == {"k": "v", "note": "значение"}
    np.testing.assert_array_equal(images.load_image(path), expected16 / np.float32(65535))  # every level kept
    fine = np.full((16, 16, 3), 1000.4 / 65535)  # far from any multiple of 1/255
    images.save_image(tmp_path / "fine.png", fine, png_bits=16)
    np.testing.assert_allclose(images.load_image(tmp_path / "fine.png"), 1000 / 65535, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="png_bits must be 8 or 16, got 12"):
        images.save_image(tmp_path / "bad.png", fine, png_bits=12)


def test_a_16bit_rgba_png_keeps_its_alpha(tmp_path):
    rgb = np.full((16, 24, 3), 0.25, np.float32)
    alpha = np.tile(np.linspace(0, 1, 24, dtype=np.float32), (16, 1))
    images.save_image(tmp_path / "a.png", rgb, alpha=alpha, png_bits=16)
    assert (tmp_path / "a.png").read_bytes()[24:26] == bytes([16, 6])  # RGBA
    np.testing.assert_allclose(images.load_alpha(tmp_path / "a.png"), alpha, atol=1 / 255)  # Pillow reads 8 bits
    over_white = rgb * alpha[..., None] + 1 - alpha[..., None]
    np.testing.assert_allclose(images.load_image(tmp_path / "a.png"), over_white, atol=1 / 65535)


def test_16bit_png_rows_filtered_sub_and_up_are_read_at_full_precision_and_paeth_at_8_bits(tmp_path):
    levels = (np.arange(2 * 5 * 3).reshape(2, 5, 3) * 2000 + 7).astype(">u2")  # none on the 8-bit grid
    raw = [levels[y].reshape(-1).view(np.uint8) for y in range(2)]
    sub = [np.concatenate([r[:6], (r[6:].astype(int) - r[:-6]) % 256]).astype(np.uint8) for r in raw]
    up = (raw[1].astype(int) - raw[0]) % 256
    rows = [b"\1" + sub[0].tobytes(), b"\2" + up.astype(np.uint8).tobytes()]
    (tmp_path / "sub_up.png").write_bytes(_png(5, 2, 2, rows))
    tall = np.repeat(levels, 8, axis=0)  # 16 rows, the smallest side `load_image` takes
    tall_rows = [np.tile(r.reshape(-1).view(np.uint8), 4).tobytes() for r in tall]
    (tmp_path / "tall.png").write_bytes(_png(5 * 4, 16, 2, [b"\0" + r for r in tall_rows]))
    np.testing.assert_array_equal(images.load_image(tmp_path / "tall.png"),
                                  np.tile(tall, (1, 4, 1)) / np.float32(65535))
    decoded = images._read_png16(tmp_path / "sub_up.png")  # 2x5: below the smallest image `load_image` takes
    np.testing.assert_array_equal(decoded, levels / np.float32(65535))
    # Paeth (4) needs each pixel's left neighbour first: Pillow decodes it, at 8 bits.
    # Row 0 filtered Paeth, which with nothing above is Sub; the others None.
    paeth = [b"\4" + bytes(r[:6]) + bytes((a - b) % 256 for a, b in zip(r[6:], r)) if y == 0 else b"\0" + r
             for y, r in enumerate(tall_rows)]
    (tmp_path / "paeth.png").write_bytes(_png(5 * 4, 16, 2, paeth))
    assert images._read_png16(tmp_path / "paeth.png") is None
    with Image.open(tmp_path / "paeth.png") as im:
        np.testing.assert_array_equal(images.load_image(tmp_path / "paeth.png"), np.asarray(im) / np.float32(255))


def test_a_corrupt_16bit_png_is_refused_in_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(_png(16, 16, 2, [b"\0" + bytes(96)] * 15))  # a row short
    with pytest.raises(UsageError, match="bad.png"):
        images.load_image(tmp_path / "bad.png")
