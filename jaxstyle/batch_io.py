"""The file side of batches and sweeps: finding inputs, shape buckets, output names, contact sheets.

`jaxstyle batch` turns many files into a few compiled programs. Every image
is resized so that its longest side is ``--size`` (the rule of
`plan.output_shape`), and images whose resized shapes fall in one
*bucket* share a program (`bucket_shape`). Three policies:

- ``pad`` (default): each side shorter than ``--size`` is rounded up to a
  multiple of ``--bucket-step`` pixels (at most ``--size``) by mirroring the
  image's edges (`pad_to`), and the output is cropped back to the image's own
  resized shape (`crop_from`). Nothing is lost; the mirrored margin (under
  one step wide) takes part in the style statistics, so an output is close
  to, not identical with, a `jaxstyle stylize` of the same file.
- ``crop``: each such side is rounded down to a multiple of the step (at
  least one step) by cutting the image's centre; outputs are a little smaller.
- ``exact``: only images with the very same resized shape share a program;
  every output equals `jaxstyle stylize` with the same settings.

Photos from one camera have one shape and need no bucketing at all.
"""

from __future__ import annotations

import glob
import math
import os
import pathlib
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxstyle import images
from jaxstyle.errors import UsageError

BUCKET_POLICIES = ("pad", "crop", "exact")
INPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")


def expand_inputs(inputs: Sequence[str]) -> tuple[list[pathlib.Path], list[tuple[str, str]]]:
    """Files, directories (their image files, not recursive) and glob patterns, as a list of files.

    Returns:
      ``(files, problems)``: the files in order of the arguments (a
      directory's and a pattern's files sorted by name, duplicates dropped),
      and ``(argument, message)`` for each argument that names nothing.
    """
    files: list[pathlib.Path] = []
    problems: list[tuple[str, str]] = []
    for arg in inputs:
        path = pathlib.Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in INPUT_EXTENSIONS and p.is_file())
            if not found:
                problems.append((arg, f"directory {arg!r} holds no image files ({', '.join(INPUT_EXTENSIONS)})"))
        elif path.exists() or not glob.has_magic(arg):
            found = [path]  # a missing file is reported when it is read, like an unreadable one
        else:
            found = sorted(pathlib.Path(p) for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            if not found:
                problems.append((arg, f"pattern {arg!r} matches no files"))
        files += found
    unique = list(dict.fromkeys(p.resolve() for p in files))
    by_resolved = {p.resolve(): p for p in reversed(files)}
    return [by_resolved[p] for p in unique], problems


def bucket_shape(shape: Sequence[int], size: int, *, policy: str = "pad", step: int = 32) -> tuple[int, int]:
    """The shape an image of resized shape ``shape`` is brought to, so that similar images share a program.

    Args:
      shape: (h, w) after resizing to ``size`` (one side equals ``size``).
      size: the longest side.
      policy: "pad", "crop" or "exact" (see the module docstring).
      step: the rounding of the sides shorter than ``size``, in pixels.
    Returns:
      (h, w) of the bucket; its longest side is ``size``.
    """
    if policy not in BUCKET_POLICIES:
        raise UsageError(f"bucket policy must be one of {', '.join(BUCKET_POLICIES)}, got {policy!r}")
    if step < 1:
        raise UsageError(f"the bucket step must be at least 1 pixel, got {step}")
    if policy == "exact":
        return tuple(shape[:2])
    if policy == "pad":
        return tuple(s if s >= size else min(size, math.ceil(s / step) * step) for s in shape[:2])
    return tuple(s if s >= size else max(min(step, s), s // step * step) for s in shape[:2])


def _margins(inner: int, outer: int) -> tuple[int, int]:
    before = abs(outer - inner) // 2
    return before, abs(outer - inner) - before


def pad_to(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centre ``image`` (h, w, c) in ``shape`` (no smaller), filling the margins by mirroring its edges."""
    (top, bottom), (left, right) = _margins(image.shape[0], shape[0]), _margins(image.shape[1], shape[1])
    return np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="reflect")


def crop_from(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The centre ``shape`` (no larger) of ``image`` (h, w, c); the inverse of `pad_to`."""
    (top, _), (left, _) = _margins(shape[0], image.shape[0]), _margins(shape[1], image.shape[1])
    return image[top:top + shape[0], left:left + shape[1]]


def format_value(value) -> str:
    """A sweep value as it appears in file names and on the contact sheet: ``1e+04``, ``0.02``, ``3``."""
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    return f"{value:g}"


def sweep_label(point: dict) -> str:
    """A sweep point's label on the contact sheet: one ``setting=value`` line per setting."""
    return "\n".join(f"{k}={format_value(v)}" for k, v in point.items())


def sweep_name(stem: str, point: dict, extension: str) -> str:
    """File name of one sweep point: ``stem__style_weight-1e+04__seed-1.png``."""
    return stem + "".join(f"__{k}-{format_value(v)}" for k, v in point.items()) + extension


def contact_sheet(tiles: Sequence[np.ndarray], labels: Sequence[str], *, columns: int | None = None,
                  gap: int = 4) -> np.ndarray:
    """Tiles in a grid on white, each with its label printed underneath (Pillow's default font).

    Args:
      tiles: RGB in [0, 1], each (h_i, w_i, 3).
      labels: one text per tile; may hold newlines.
      columns: tiles per row (default: about the square root of their number).
      gap: pixels between tiles and around the sheet.
    Returns:
      The sheet, float32 (H, W, 3) in [0, 1].
    """
    if len(tiles) != len(labels) or not tiles:
        raise ValueError(f"need one label per tile and at least one tile, got {len(tiles)} tiles, "
                         f"{len(labels)} labels")
    font = ImageFont.load_default()
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = max(probe.multiline_textbbox((0, 0), label, font=font)[3] for label in labels) + gap
    text_w = max(probe.multiline_textbbox((0, 0), label, font=font)[2] for label in labels)
    cell_w = max(cell_w, text_w)
    sheet = Image.new("RGB", (gap + columns * (cell_w + gap), gap + rows * (cell_h + text_h + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        x = gap + (i % columns) * (cell_w + gap)
        y = gap + (i // columns) * (cell_h + text_h + gap)
        sheet.paste(Image.fromarray(images.to_8bit(tile)), (x, y))
        draw.multiline_text((x, y + cell_h + gap // 2), label, fill="black", font=font)
    return np.asarray(sheet, np.float32) / 255
