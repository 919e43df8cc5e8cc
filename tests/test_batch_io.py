"""`jaxstyle.batch_io`: finding inputs, shape buckets, padding and cropping, contact sheets."""

from __future__ import annotations

import numpy as np
import pytest

from jaxstyle import batch_io
from synthetic import photo as _photo_hw


def _photo(height: int, width: int, seed: int) -> np.ndarray:
    return _photo_hw(height, width, seed=seed)


@pytest.mark.parametrize("policy, shape, expected", [
    ("exact", (171, 256), (171, 256)),
    ("pad", (171, 256), (192, 256)),
    ("pad", (256, 171), (256, 192)),
    ("pad", (250, 256), (256, 256)),  # never beyond the longest side
    ("pad", (256, 256), (256, 256)),
    ("crop", (171, 256), (160, 256)),
    ("crop", (20, 256), (20, 256)),  # less than one step: kept
])
def test_bucket_shape(policy, shape, expected):
    assert batch_io.bucket_shape(shape, 256, policy=policy, step=32) == expected


def test_pad_then_crop_gives_back_the_image():
    image = _photo(25, 32, 0)
    padded = batch_io.pad_to(image, (32, 32))
    assert padded.shape == (32, 32, 3)
    np.testing.assert_array_equal(batch_io.crop_from(padded, (25, 32)), image)
    np.testing.assert_array_equal(padded[2], image[1])  # mirrored, not zeros: 3 rows above, 4 below
    assert batch_io.crop_from(image, (16, 32)).shape == (16, 32, 3)


def test_expand_inputs_files_directories_and_globs(tmp_path):
    for name in ("a.png", "b.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.png").write_bytes(b"x")
    files, problems = batch_io.expand_inputs([str(tmp_path), str(tmp_path / "sub" / "*.png"),
                                              str(tmp_path / "a.png"), str(tmp_path / "*.webp"),
                                              str(tmp_path / "missing.png")])
    assert [f.name for f in files] == ["a.png", "b.jpg", "c.png", "missing.png"]  # a.png once
    assert problems == [(str(tmp_path / "*.webp"), f"pattern {str(tmp_path / '*.webp')!r} matches no files")]


def test_contact_sheet_prints_the_labels():
    tiles = [np.full((20, 30, 3), 0.5, np.float32)] * 3
    sheet = batch_io.contact_sheet(tiles, ["a=1", "a=10", "a=100"], columns=3)
    other = batch_io.contact_sheet(tiles, ["b=1", "b=10", "b=100"], columns=3)
    assert sheet.dtype == np.float32 and sheet.shape[1] > 3 * 30 and sheet.shape[0] > 20
    text = sheet[25:]  # below the tiles: black text on white
    assert text.min() < 0.3 and np.abs(sheet - other).max() > 0.5
    assert batch_io.sweep_name("cat", {"style_weight": 1e4, "seed": 2}, ".png") == "cat__style_weight-10000__seed-2.png"
