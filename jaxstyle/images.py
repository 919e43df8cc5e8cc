"""Image files in and out: the edge where pixels become arrays and back.

Everything in the library works on float32 RGB arrays of shape (h, w, 3) with
values in [0, 1]. This module is the only place that turns files into such
arrays (`load_image`), arrays into files (`save_image`, `check_writable`), and
changes their size (`resize_longest`, `resize_to`). It uses Pillow and NumPy;
every failure a user can cause (a missing, corrupt, huge or tiny file, an
output path that cannot be written) raises `UsageError` or `JaxstyleError`
with a one-line message naming the file.

Output formats follow the file extension (`SUPPORTED_OUTPUT_EXTENSIONS`):
PNG (8 or 16 bits per channel), JPEG and WebP (quality 95), and 16-bit TIFF.
Pillow has no 16-bit RGB mode, so it can neither write nor read 16-bit colour:
`_encode_png16` and `_encode_tiff16` write those files, and `_read_rgb16`
reads them back at full precision. Colours are sRGB throughout: an input's
embedded ICC profile is converted to sRGB on loading, and every output says
it is sRGB (PNG's sRGB chunk, the sRGB ICC profile in the others).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import pathlib
import re
import struct
import tempfile
import threading
import warnings
import zlib
from typing import Callable, Iterator, Mapping

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageFile, PngImagePlugin

from jaxstyle.config import DEFAULT_MAX_PIXELS  # refuse larger images before decoding them
from jaxstyle.errors import JaxstyleError, UsageError
from jaxstyle._files import atomic_write_bytes


# Smallest side accepted: VGG19 pools four times before conv5_1 (16 -> 1 pixel).
MIN_SIDE = 16

SUPPORTED_OUTPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")

# What Pillow raises for files it cannot read: unidentified or unsupported
# formats and I/O (OSError, which includes UnidentifiedImageError), malformed
# headers or chunks (SyntaxError, struct.error, ValueError, IndexError, EOFError),
# bad compressed streams (zlib.error) and decompression bombs. Anything else
# escaping Pillow is treated as a bug and keeps its traceback.
_PILLOW_FILE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    IndexError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)

_EXIF_ORIENTATION = ExifTags.Base.Orientation
_EXIF_IMAGE_DESCRIPTION = ExifTags.Base.ImageDescription

# Pillow's safety settings are module globals; `_strict_pillow` sets them for
# the duration of one load, and this lock keeps concurrent loads from mixing them.
_PILLOW_SETTINGS_LOCK = threading.Lock()


# ----------------------------------------------------------------------------
# Loading


def load_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB in [0, 1].

    Any file Pillow can open is accepted (the first frame of animations and
    multi-page files). Colour modes are converted as follows:

    - grayscale (1, L, I;16, I, F) is repeated into the three channels; 16-bit
      data keeps its precision (divided by 65535); 32-bit integer (mode I) and
      floating-point (mode F) data carry no range, so it is read from their
      values (`_scaled_by_range`: integers up to 255 as 8-bit, up to 65535 as
      16-bit; floats up to 1 as they are, up to 255 or 65535 as 8- or 16-bit)
      and other values are refused;
    - palette, CMYK, YCbCr, LAB and HSV images are converted to RGB by Pillow;
    - transparency (RGBA, LA, PA, a palette or colour key with transparency) is
      composited over WHITE: ``rgb * alpha + (1 - alpha)`` (`load_alpha` reads
      the transparency itself, which the commands carry to the output);
    - an embedded ICC profile (Adobe RGB, Display P3, a camera's, CMYK) is
      converted to sRGB with littleCMS (`_in_srgb`); files without one are
      taken as sRGB, and the full-precision 16-bit paths below keep their
      values as they are;
    - an EXIF (or TIFF) Orientation tag is applied, as
      ``PIL.ImageOps.exif_transpose`` would, so the array is upright;
    - uncompressed 16-bit RGB TIFFs and 16-bit RGB(A) PNGs whose rows are
      filtered None, Sub or Up (such as `save_image` writes) are read at full
      precision (`_read_rgb16`). Other 16-bit colour files (PNGs with Average
      or Paeth rows, compressed TIFFs) are reduced to 8 bits per channel by Pillow.

    Args:
      path: the image file.
      max_pixels: refuse images with more than this many pixels (width times
        height), checked from the header before anything is decoded.

    Returns:
      float32 array (h, w, 3), RGB in [0, 1], C-contiguous.

    Raises:
      UsageError: the path is missing, a directory, or empty; the file is not an
        image, is truncated or corrupt, has more than ``max_pixels`` pixels, or
        has a side shorter than `MIN_SIDE`.
    """
    return _read(path, max_pixels, _to_rgb)


def load_alpha(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """The transparency of an image file, (h, w) float32 in [0, 1] (1: opaque), or None when it has none.

    Upright like `load_image`'s pixels. Transparency is an alpha channel, or a
    palette or colour key with transparency (`_ALPHA_MODES`).

    Raises:
      UsageError: as `load_image`.
    """
    def alpha(im: Image.Image, name: str) -> np.ndarray | None:
        if im.mode not in _ALPHA_MODES and "transparency" not in im.info:
            return None
        return np.asarray(im.convert("RGBA"))[..., 3].astype(np.float32) / 255

    return _read(path, max_pixels, alpha, raw16=False)


def _read(path: str | os.PathLike, max_pixels: int, decode: Callable[[Image.Image, str], np.ndarray | None],
          raw16: bool = True) -> np.ndarray | None:
    """Open, check and decode an image file with ``decode(image, name)``; the result upright, or None."""
    path = pathlib.Path(path)
    name = repr(str(path))
    if max_pixels < 1:
        raise UsageError(f"`max_pixels` must be at least 1, got {max_pixels}")
    _check_readable_file(path)
    try:
        with _strict_pillow(max_pixels), Image.open(path) as im:
            width, height = im.size  # from the header; nothing decoded yet
            _check_pixel_count(name, width, height, max_pixels)
            _check_min_side(name, width, height)
            pixels = _read_rgb16(path, im) if raw16 else None
            if pixels is None:
                im.load()  # decode everything now, so a truncated file fails here
                pixels = decode(_in_srgb(im), name)
            orientation = _orientation(im)
    except _PILLOW_FILE_ERRORS as e:
        raise _unreadable(name, e, max_pixels) from e
    return None if pixels is None else np.ascontiguousarray(_apply_orientation(pixels, orientation))


def image_shape(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(h, w) of an image file, upright (EXIF orientation applied), from its header only.

    Raises:
      UsageError: as `load_image` for a missing, empty, unreadable, too large
        or too small file (corruption past the header shows only when the
        image is loaded).
    """
    path = pathlib.Path(path)
    name = repr(str(path))
    _check_readable_file(path)
    try:
        with _strict_pillow(max_pixels), Image.open(path) as im:
            width, height = im.size
            _check_pixel_count(name, width, height, max_pixels)
            _check_min_side(name, width, height)
            transposed = _orientation(im) in (5, 6, 7, 8)
    except _PILLOW_FILE_ERRORS as e:
        raise _unreadable(name, e, max_pixels) from e
    return (width, height) if transposed else (height, width)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Read the text metadata that `save_image` stored in an image file.

    Args:
      path: a PNG (text chunks: tEXt, zTXt and iTXt), or a JPEG, WebP or TIFF
        whose ImageDescription holds a JSON object of strings, as `save_image`
        writes it.

    Returns:
      the key-value pairs; empty when the file has none.

    Raises:
      UsageError: the file is missing or cannot be read as an image.
    """
    path = pathlib.Path(path)
    name = repr(str(path))
    _check_readable_file(path)
    try:
        with _strict_pillow(DEFAULT_MAX_PIXELS), Image.open(path) as im:
            _check_pixel_count(name, *im.size, DEFAULT_MAX_PIXELS)  # text after IDAT needs a decode
            if im.format == "PNG":
                return {str(k): str(v) for k, v in im.text.items()}
            description = im.getexif().get(_EXIF_IMAGE_DESCRIPTION)
    except _PILLOW_FILE_ERRORS as e:
        raise _unreadable(name, e, DEFAULT_MAX_PIXELS) from e
    return _parse_description(description)


def _check_readable_file(path: pathlib.Path) -> None:
    name = repr(str(path))
    try:
        if not path.exists():
            raise UsageError(f"image file {name} does not exist; check the path")
        if path.is_dir():
            raise UsageError(f"image path {name} is a directory; give an image file")
        if not path.is_file():  # a FIFO, a device such as /dev/zero, a socket: reading could block or never end
            raise UsageError(f"image path {name} is not a regular file; give an image file")
        size = path.stat().st_size
    except OSError as e:
        raise UsageError(f"cannot read image {name}: {e.strerror or _one_line(e)}") from e
    if size == 0:
        raise UsageError(f"image file {name} is empty (0 bytes); give a valid image file")


def _check_pixel_count(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise UsageError(
            f"image {name} is {width}x{height} = {width * height} pixels, more than the limit "
            f"of {max_pixels}; shrink it first or raise `max_pixels`"
        )


def _check_min_side(name: str, width: int, height: int) -> None:
    if min(width, height) < MIN_SIDE:
        raise UsageError(
            f"image {name} is {width}x{height} pixels, too small for the network; "
            f"the minimum is {MIN_SIDE} pixels on each side"
        )


@contextlib.contextmanager
def _strict_pillow(max_pixels: int) -> Iterator[None]:
    """Within the block, Pillow refuses truncated files and images over ``2 * max_pixels``.

    Pillow warns above ``MAX_IMAGE_PIXELS`` and raises above twice that, as soon
    as it has read the header. The warning is silenced because `_check_pixel_count`
    refuses everything over ``max_pixels`` right after, with the image's size in
    the message; Pillow's error stays for images that are far too large and for
    sizes found while decoding (animation frames).
    """
    with _PILLOW_SETTINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _unreadable(name: str, error: BaseException, max_pixels: int) -> UsageError:
    if isinstance(error, Image.DecompressionBombError):
        size = re.search(r"\((\d+) pixels\)", str(error))  # Pillow: "Image size (N pixels) exceeds ..."
        pixels = f" ({size.group(1)})" if size else ""
        return UsageError(
            f"image {name} has more pixels{pixels} than the limit of {max_pixels}, "
            "refused before decoding; shrink it first or raise `max_pixels`"
        )
    if isinstance(error, Image.UnidentifiedImageError):
        return UsageError(
            f"file {name} is not an image Pillow can read; give a PNG, JPEG, WebP, TIFF, ... file"
        )
    return UsageError(
        f"cannot read image {name}, the file is truncated or corrupt "
        f"({type(error).__name__}: {_one_line(error)}); re-export it or choose another file"
    )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _orientation(im: Image.Image) -> int:
    """The EXIF Orientation (1 to 8; 1 when absent or invalid), as ``exif_transpose`` reads it."""
    orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn (h, w, c) pixels upright; the same transposes as ``PIL.ImageOps.exif_transpose``."""
    # Done on the array so that full-precision 16-bit data gets the same treatment.
    # np.rot90 turns counter-clockwise, like Pillow's ROTATE_90.
    transposes: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
        3: lambda a: a[::-1, ::-1],  # ROTATE_180
        4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
        5: lambda a: a.swapaxes(0, 1),  # TRANSPOSE
        6: lambda a: np.rot90(a, -1),  # ROTATE_270
        7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],  # TRANSVERSE
        8: lambda a: np.rot90(a, 1),  # ROTATE_90
    }
    return transposes[orientation](pixels)


_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}  # not LAB: its A is a colour axis
# Modes whose colours littleCMS converts from an embedded ICC profile to sRGB, and the mode it gives.
_ICC_MODES = {"RGB": "RGB", "RGBA": "RGBA", "CMYK": "RGB", "L": "RGB"}


@functools.lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """The ICC profile of sRGB (littleCMS's), embedded in JPEG, WebP and TIFF outputs."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _in_srgb(im: Image.Image) -> Image.Image:
    """The decoded image with its embedded ICC profile's colours converted to sRGB.

    VGG19 and every output assume sRGB: a photo in Adobe RGB or Display P3
    read as if it were sRGB looks washed out. Images without a profile are
    taken as sRGB. A profile littleCMS cannot read, or one of a mode it does
    not convert (16-bit and float data, palettes), is ignored, as browsers do.
    """
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in _ICC_MODES:
        return im
    try:
        return ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                         ImageCms.createProfile("sRGB"), outputMode=_ICC_MODES[im.mode])
    except (ImageCms.PyCMSError, OSError, ValueError):
        return im


def _to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """Decoded Pillow image -> float32 (h, w, 3) RGB in [0, 1], alpha over white."""
    mode = im.mode
    if mode.startswith("I;16"):
        return _gray_to_rgb(np.asarray(im).astype(np.float32) / 65535)
    if mode in ("I", "F"):
        return _gray_to_rgb(_scaled_by_range(np.asarray(im, dtype=np.float64), name, mode))
    has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
    rgba_or_rgb = im.convert("RGBA" if has_alpha else "RGB")
    pixels = np.asarray(rgba_or_rgb, dtype=np.float32) / 255
    if has_alpha:
        return _over_white(pixels)
    return pixels


# The value ranges a 32-bit integer (mode I) or float (mode F) image is read in: the first
# range (smallest top) that holds all its values decides. Such files carry no range of their own.
_VALUE_RANGES = {"I": (255, 65535), "F": (1, 255, 65535)}


def _scaled_by_range(gray: np.ndarray, name: str, mode: str) -> np.ndarray:
    """Pixels of a 32-bit (mode I or F) image in [0, 1], by the range its values fall in.

    Integers up to 255 are 8-bit values, up to 65535 16-bit values; floats up
    to 1 are already in [0, 1], up to 255 or 65535 are 8- or 16-bit values.
    Negative, larger or non-finite values are refused, since no scale fits them.
    """
    if not np.isfinite(gray).all():
        raise UsageError(f"image {name} holds NaN or infinite values; give a finite image")
    low, high = (float(gray.min()), float(gray.max())) if gray.size else (0.0, 0.0)
    top = next((t for t in _VALUE_RANGES[mode] if high <= t), None)
    if low < 0 or top is None:
        kind = "32-bit integer" if mode == "I" else "floating-point"
        ranges = " or ".join(f"0-{t}" for t in _VALUE_RANGES[mode])
        raise UsageError(f"{kind} image {name} holds values from {low:g} to {high:g}, outside {ranges}; "
                         "rescale it, e.g. to 8 or 16 bits")
    return (gray / top).astype(np.float32)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite straight (not premultiplied) RGBA in [0, 1] over white."""
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1 - alpha)


_RAW_RGB16 = {"RGB;16L": "<u2", "RGB;16B": ">u2"}  # Pillow's raw modes: little, big endian


def _read_rgb16(path: pathlib.Path, im: Image.Image) -> np.ndarray | None:
    """Full-precision RGB of a 16-bit colour file Pillow would reduce to 8 bits, or None for other files."""
    if im.format == "TIFF":
        return _read_raw_rgb16_tiff(path, im)
    if im.format == "PNG":
        return _read_png16(path)
    return None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_RGB16 = {2: 3, 6: 4}  # colour type (RGB, RGBA) -> samples per pixel


def _read_png16(path: pathlib.Path) -> np.ndarray | None:
    """The pixels of a non-interlaced 16-bit RGB or RGBA PNG (RGBA composited over white, as
    `load_image` does) whose rows are filtered None (0), Sub (1) or Up (2); None for any other PNG.

    Reference: PNG (Third Edition), sections 7.3 (filtering) and 9.2 (filter types).
    """
    with open(path, "rb") as f:
        data = f.read()
    width, height, depth, colour, interlace = struct.unpack(">IIBB2xB", data[16:29])
    if depth != 16 or colour not in _PNG_RGB16 or interlace:
        return None
    chunks, at = [], 8
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"IDAT":
            chunks.append(data[at + 8:at + 8 + length])
        at += 12 + length
    samples = _PNG_RGB16[colour]
    bpp = 2 * samples  # bytes per pixel
    expected = height * (1 + width * bpp)
    try:
        rows = np.frombuffer(zlib.decompressobj().decompress(b"".join(chunks), expected + 1), np.uint8)
    except zlib.error as e:
        raise ValueError(f"PNG image data is corrupt: {e}") from e
    if rows.size != expected:
        raise EOFError(f"PNG image data holds {rows.size} bytes, expected {expected}")
    rows = rows.reshape(height, 1 + width * bpp)
    if np.any(rows[:, 0] > 2):
        return None  # Average or Paeth: sequential along each row; Pillow decodes them (at 8 bits)
    out, prior = np.empty((height, width * bpp), np.uint8), np.zeros(width * bpp, np.uint8)
    for y, (kind, row) in enumerate(zip(rows[:, 0], rows[:, 1:])):
        if kind == 1:  # Sub: each byte adds the same byte of the pixel to its left (mod 256)
            row = np.cumsum(row.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up: each byte adds the byte above it
            row = row + prior
        out[y] = prior = row
    pixels = out.view(">u2").reshape(height, width, samples).astype(np.float32) / np.float32(65535)
    return pixels if samples == 3 else _over_white(pixels)


def _read_raw_rgb16_tiff(path: pathlib.Path, im: Image.Image) -> np.ndarray | None:
    """Full-precision pixels of an uncompressed 16-bit RGB TIFF, or None for other files.

    Pillow decodes 16-bit colour to 8 bits; for uncompressed strips the samples
    can be read from the file directly.
    """
    tiles = im.tile
    if im.format != "TIFF" or not tiles or any(tile[0] != "raw" for tile in tiles):
        return None
    rawmodes = {tile[3][0] if isinstance(tile[3], tuple) else tile[3] for tile in tiles}  # (rawmode, ...)
    if len(rawmodes) != 1 or (rawmode := rawmodes.pop()) not in _RAW_RGB16:
        return None
    channels = 3
    width, height = im.size
    out = np.empty((height, width, channels), dtype=np.float32)
    covered = 0
    with open(path, "rb") as f:
        for _, (x0, y0, x1, y1), offset, args in tiles:
            _, stride, ystep = (*(args if isinstance(args, tuple) else (args,)), 0, 1)[:3]
            row_bytes = (x1 - x0) * channels * 2
            inside = 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            if stride not in (0, row_bytes) or ystep != 1 or not inside:
                return None  # an unusual layout: let Pillow decode it (at 8 bits)
            f.seek(offset)
            data = f.read(row_bytes * (y1 - y0))
            if len(data) != row_bytes * (y1 - y0):
                raise EOFError(f"TIFF strip at byte {offset} is truncated")
            samples = np.frombuffer(data, dtype=_RAW_RGB16[rawmode])
            out[y0:y1, x0:x1] = samples.reshape(y1 - y0, x1 - x0, channels) / np.float32(65535)
            covered += (x1 - x0) * (y1 - y0)
    return out if covered == width * height else None


# ----------------------------------------------------------------------------
# Resizing


def resize_longest(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the longer side is ``size`` pixels, keeping the aspect ratio.

    Args:
      image: float (h, w, c), values in [0, 1].
      size: the new length of the longer side, at least 1.

    Returns:
      float32 (h', w', c) with max(h', w') == size and each side at least 1,
      resampled with Lanczos (see `resize_to`) and clipped to [0, 1].
    """
    height, width = np.shape(image)[:2]
    if size < 1:
        raise ValueError(f"size must be at least 1 pixel, got {size}")
    longest = max(height, width)
    return resize_to(image, (max(1, round(height * size / longest)), max(1, round(width * size / longest))))


def resize_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize to exactly ``shape`` = (h, w) pixels, with Lanczos resampling.

    Each channel is resampled in Pillow's 32-bit float mode ("F"), so no
    precision is lost to 8-bit quantisation. Lanczos overshoots at sharp
    edges; the result is clipped back to [0, 1].

    Args:
      image: float (h, w, c), values in [0, 1].
      shape: (h', w'), both at least 1.

    Returns:
      float32 (h', w', c) in [0, 1].
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"expected an image of shape (h, w, c), got shape {image.shape}")
    new_height, new_width = (int(s) for s in shape)
    if new_height < 1 or new_width < 1:
        raise ValueError(f"the new shape must be at least 1x1 pixels, got {tuple(shape)}")
    if (new_height, new_width) == image.shape[:2]:
        return np.clip(image, 0, 1)
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
                (new_width, new_height), Image.Resampling.LANCZOS
            )
        )
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------
# Saving


def check_writable(path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Check, before any compute, that `save_image` will be able to write ``path``.

    The extension must be one of `SUPPORTED_OUTPUT_EXTENSIONS`; the path must
    not be a directory, nor an existing file unless ``overwrite``; and the
    nearest existing directory above it (missing directories are created when
    saving) must accept a new file, which is checked by creating and removing
    a temporary file there.

    Raises:
      UsageError: one of the above does not hold.
    """
    path = pathlib.Path(path)
    _output_format(path)
    _check_output_path(path, overwrite=overwrite)
    check_directory_writable(path, "the output")


def check_directory_writable(path: str | os.PathLike, what: str) -> None:
    """Check that a file can be created at ``path``: its nearest existing folder accepts a new file.

    Missing folders on the way are created when saving. The check creates and
    removes a temporary file there (an unnamed one where the system makes them).

    Raises:
      UsageError: naming ``what`` (e.g. "the log"), the folder and the reason.
    """
    path = pathlib.Path(path)
    directory = path.parent
    try:
        while not directory.exists():
            directory = directory.parent
        if not directory.is_dir():
            raise UsageError(f"cannot write {what} {str(path)!r}: {str(directory)!r} is a file, not a directory; "
                             "choose another path")
        # An unnamed file where the system makes them (Linux's O_TMPFILE), so that nothing is left
        # whenever the run ends; elsewhere a named one, removed at once.
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as e:
        raise UsageError(f"cannot write {what} {str(path)!r}: cannot create a file in {str(directory)!r} "
                         f"({e.strerror or _one_line(e)}); choose another path") from e


def save_image(
    path: str | os.PathLike,
    image: np.ndarray,
    *,
    metadata: Mapping[str, str] | None = None,
    overwrite: bool = False,
    alpha: np.ndarray | None = None,
    png_bits: int = 8,
) -> None:
    """Write an RGB image, with transparency if given; the format follows the extension.

    - ``.png``: 8 or 16 (``png_bits``) bits per channel; ``metadata`` as text chunks (tEXt, or iTXt
      for text outside Latin-1). Every format is tagged sRGB: PNG with its
      sRGB chunk, the others with the sRGB ICC profile.
    - ``.jpg``/``.jpeg``: quality 95, no chroma subsampling; ``.webp``:
      quality 95 (lossy). ``metadata`` as a JSON object in the EXIF
      ImageDescription.
    - ``.tif``/``.tiff``: 16 bits per channel, uncompressed; ``metadata`` as a
      JSON object in the ImageDescription tag.

    Values are clipped to [0, 1] and rounded to the nearest level. The file is
    encoded in memory first and then written atomically, so a failure never
    leaves a partial file behind; `read_metadata` reads the metadata back.

    Args:
      path: the output file; missing parent directories are created.
      image: float (h, w, 3), RGB in [0, 1] (a NumPy or JAX array).
      metadata: text key-value pairs; keys are 1 to 79 printable Latin-1
        characters (the PNG rule), values any text without NUL characters.
      overwrite: replace an existing file.
      alpha: (h, w) opacity in [0, 1], written as an alpha channel by PNG,
        WebP and TIFF (16 bits, unassociated); JPEG has none, and the picture
        is kept as it is (the library composites transparent inputs over white).
      png_bits: 8 or 16, the bits per channel of a PNG (other formats ignore it).

    Raises:
      UsageError: unknown extension, the path is a directory, or the file exists
        and ``overwrite`` is false.
      JaxstyleError: the image holds NaN or infinite values, or it cannot be
        encoded in this format (e.g. WebP's 16383-pixel limit) or written.
      ValueError: ``image`` is not a float (h, w, 3) array, or bad ``metadata`` keys.
    """
    path = pathlib.Path(path)
    name = repr(str(path))
    fmt = _output_format(path)
    _check_output_path(path, overwrite=overwrite)
    pixels = _checked_pixels(image, name)
    text = _checked_metadata(metadata)
    if alpha is not None and fmt != "JPEG":
        alpha = np.asarray(alpha, dtype=pixels.dtype)
        if alpha.shape != pixels.shape[:2] or not np.all(np.isfinite(alpha)):
            raise ValueError(f"alpha must be finite, of the image's shape {pixels.shape[:2]}, got {alpha.shape}")
        pixels = np.concatenate([pixels, np.clip(alpha, 0, 1)[..., None]], axis=-1)
    if png_bits not in (8, 16):
        raise ValueError(f"png_bits must be 8 or 16, got {png_bits}")
    try:
        data = _encode_png16(pixels, text) if fmt == "PNG" and png_bits == 16 else _ENCODERS[fmt](pixels, text)
    except (OSError, ValueError, struct.error) as e:
        raise JaxstyleError(f"cannot encode {name} as {fmt}: {_one_line(e)}") from e
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise JaxstyleError(f"cannot write {name}: {e.strerror or _one_line(e)}") from e


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}


def _output_format(path: pathlib.Path) -> str:
    if path.suffix == "" and path.name.lower() in _FORMATS:  # "dir/.png": Python reads it as a name, not an extension
        raise UsageError(f"output {str(path)!r} has an extension but no name; give a file name such as out{path.name}")
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"cannot tell the image format of output {str(path)!r} from its extension "
            f"{path.suffix!r}; use one of {', '.join(SUPPORTED_OUTPUT_EXTENSIONS)}"
        )
    return fmt


def _check_output_path(path: pathlib.Path, *, overwrite: bool) -> None:
    name = repr(str(path))
    try:
        is_dir, exists = path.is_dir(), path.exists() or path.is_symlink()
    except OSError as e:
        raise UsageError(f"cannot write {name}: {e.strerror or _one_line(e)}") from e
    if is_dir:
        raise UsageError(f"output path {name} is a directory; give a file name")
    if exists and not overwrite:
        raise UsageError(f"output file {name} already exists; pass `overwrite` to replace it")


def _checked_pixels(image: np.ndarray, name: str) -> np.ndarray:
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or 0 in pixels.shape:
        raise ValueError(f"expected an RGB image of shape (h, w, 3), got shape {pixels.shape}")
    if not np.issubdtype(pixels.dtype, np.floating):
        raise ValueError(f"expected a float image with values in [0, 1], got dtype {pixels.dtype}")
    bad = int(np.size(pixels) - np.count_nonzero(np.isfinite(pixels)))
    if bad:
        raise JaxstyleError(
            f"cannot save {name}: the image holds {bad} NaN or infinite values "
            "(did the optimisation diverge? try a smaller learning rate)"
        )
    # At least float32 (float16 overflows at 65535), and no copy to float64 for float32 input.
    return np.clip(pixels.astype(np.result_type(pixels.dtype, np.float32)), 0, 1)


def _checked_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    text = dict(metadata or {})
    for key, value in text.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"metadata keys and values must be str, got {key!r}: {value!r}")
        if not 1 <= len(key) <= 79 or not all(32 <= ord(c) <= 126 or 161 <= ord(c) <= 255 for c in key):
            raise ValueError(f"metadata key {key!r} must be 1 to 79 printable Latin-1 characters")
        if "\0" in value:
            raise ValueError(f"metadata value for {key!r} contains a NUL character")
    return text


def _quantize(pixels: np.ndarray, levels: int, dtype: type) -> np.ndarray:
    return np.round(pixels * levels).astype(dtype)


def to_8bit(image: np.ndarray) -> np.ndarray:
    """An image in [0, 1] (values outside are clipped) as uint8 levels, rounded to the nearest."""
    return _quantize(np.clip(np.asarray(image, np.float32), 0, 1), 255, np.uint8)


def _encode_pillow(fmt: str, pixels: np.ndarray, text: dict[str, str]) -> bytes:
    im = Image.fromarray(_quantize(pixels, 255, np.uint8))
    options: dict[str, object] = {}
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add(b"sRGB", b"\0")  # the colours are sRGB (rendering intent: perceptual)
        for key, value in text.items():
            info.add_text(key, value)  # falls back to iTXt outside Latin-1
        options["pnginfo"] = info
    else:
        options["icc_profile"] = srgb_profile()
        options["quality"] = 95
        if fmt == "JPEG":
            options["subsampling"] = 0  # 4:4:4; Pillow's default halves the colour resolution
        if text:
            exif = Image.Exif()
            exif[_EXIF_IMAGE_DESCRIPTION] = _description(text)
            options["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    im.save(buffer, fmt, **options)
    return buffer.getvalue()


def _description(text: dict[str, str]) -> str:
    return json.dumps(text, ensure_ascii=True, sort_keys=True)  # ASCII, as TIFF/EXIF require


def _parse_description(description: object) -> dict[str, str]:
    if isinstance(description, bytes):
        description = description.decode("latin-1")
    if not isinstance(description, str):
        return {}
    try:
        parsed = json.loads(description.rstrip("\0"))
    except ValueError:
        return {}
    if isinstance(parsed, dict) and all(isinstance(v, str) for v in parsed.values()):
        return parsed
    return {}


def _encode_png16(pixels: np.ndarray, text: dict[str, str]) -> bytes:
    """A PNG with 16 bits per sample, RGB or RGBA, tagged sRGB, ``text`` in tEXt (or iTXt) chunks.

    Rows are filtered Up (each byte minus the one above), which `_read_png16`
    undoes at full precision. Reference: PNG (Third Edition), sections 5 and 11.
    """
    height, width, samples = pixels.shape
    rows = _quantize(pixels, 65535, np.uint16).astype(">u2").view(np.uint8).reshape(height, -1)
    up = np.diff(rows, axis=0, prepend=np.zeros((1, rows.shape[1]), np.uint8))  # uint8: modulo 256
    filtered = np.concatenate([np.full((height, 1), 2, np.uint8), up], axis=1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    colour = {3: 2, 4: 6}[samples]
    out = [_PNG_SIGNATURE, chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)),
           chunk(b"sRGB", b"\0")]
    for key, value in text.items():
        try:
            out.append(chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
        except UnicodeEncodeError:
            out.append(chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8")))
    out += [chunk(b"IDAT", zlib.compress(filtered.tobytes(), 6)), chunk(b"IEND", b"")]
    return b"".join(out)


def _encode_tiff16(pixels: np.ndarray, text: dict[str, str]) -> bytes:
    """A baseline TIFF: little-endian, uncompressed RGB, 16 bits per sample, one strip.

    Pillow has no 16-bit RGB mode and cannot write this, hence the writer.
    Reference: TIFF Revision 6.0, Part 1 (baseline RGB full-colour images).
    """
    height, width, samples = pixels.shape  # RGB, or RGBA with unassociated alpha
    strip = _quantize(pixels, 65535, np.uint16).astype("<u2").tobytes()
    if len(strip) > 2**32 - 2**20:
        raise ValueError(f"{width}x{height} pixels at 16 bits is too large for TIFF (4 GiB offsets)")
    SHORT, LONG, RATIONAL, ASCII, UNDEFINED = 3, 4, 5, 2, 7
    # (tag, type, count, value bytes), in ascending tag order as TIFF requires.
    entries = [
        (256, LONG, 1, struct.pack("<I", width)),  # ImageWidth
        (257, LONG, 1, struct.pack("<I", height)),  # ImageLength
        (258, SHORT, samples, struct.pack(f"<{samples}H", *[16] * samples)),  # BitsPerSample
        (259, SHORT, 1, struct.pack("<H", 1)),  # Compression: none
        (262, SHORT, 1, struct.pack("<H", 2)),  # PhotometricInterpretation: RGB
    ]
    if text:
        description = _description(text).encode("ascii") + b"\0"
        entries.append((270, ASCII, len(description), description))  # ImageDescription
    entries += [
        (273, LONG, 1, None),  # StripOffsets: filled in below
        (277, SHORT, 1, struct.pack("<H", samples)),  # SamplesPerPixel
        (278, LONG, 1, struct.pack("<I", height)),  # RowsPerStrip: one strip
        (279, LONG, 1, struct.pack("<I", len(strip))),  # StripByteCounts
        (282, RATIONAL, 1, struct.pack("<II", 72, 1)),  # XResolution
        (283, RATIONAL, 1, struct.pack("<II", 72, 1)),  # YResolution
        (284, SHORT, 1, struct.pack("<H", 1)),  # PlanarConfiguration: interleaved
        (296, SHORT, 1, struct.pack("<H", 2)),  # ResolutionUnit: inch
        *([(338, SHORT, 1, struct.pack("<H", 2))] if samples == 4 else []),  # ExtraSamples: unassociated alpha
        (34675, UNDEFINED, len(icc := srgb_profile()), icc),  # InterColorProfile: sRGB
    ]
    ifd_offset = 8
    extra_offset = ifd_offset + 2 + 12 * len(entries) + 4
    # Values over 4 bytes go after the IFD, each at a word (even) offset; then the strip.
    extra_size = sum(len(v) + len(v) % 2 for _, _, _, v in entries if v is not None and len(v) > 4)
    strip_offset = extra_offset + extra_size
    ifd = struct.pack("<H", len(entries))
    extra = b""
    for tag, kind, count, value in entries:
        if value is None:
            value = struct.pack("<I", strip_offset)
        if len(value) > 4:
            field = struct.pack("<I", extra_offset + len(extra))
            extra += value + b"\0" * (len(value) % 2)
        else:
            field = value.ljust(4, b"\0")
        ifd += struct.pack("<HHI", tag, kind, count) + field
    ifd += struct.pack("<I", 0)  # no next IFD
    header = b"II" + struct.pack("<HI", 42, ifd_offset)
    return header + ifd + extra + strip


_ENCODERS: dict[str, Callable[[np.ndarray, dict[str, str]], bytes]] = {
    "PNG": lambda pixels, text: _encode_pillow("PNG", pixels, text),
    "JPEG": lambda pixels, text: _encode_pillow("JPEG", pixels, text),
    "WEBP": lambda pixels, text: _encode_pillow("WEBP", pixels, text),
    "TIFF": _encode_tiff16,
}
