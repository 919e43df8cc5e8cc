"""`jaxstyle.commands`: `jaxstyle batch` and `jaxstyle sweep` from files to files, on the tiny network.

What every command shares (endings, signals, resuming) is tested in
tests/test_report.py, what it may write in tests/test_outputs.py; the
stylize command's options in tests/test_cli.py.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from jaxstyle import cli, images
from processes import run_distributed
from synthetic import photo

LEVEL = 1 / 255  # one step of an 8-bit PNG


def _photo(height: int, width: int, seed: int) -> np.ndarray:
    return photo(height, width, seed=seed)


@pytest.fixture
def inputs(tmp_path) -> pathlib.Path:
    d = tmp_path / "photos"
    images.save_image(d / "a.png", _photo(30, 40, 1))
    images.save_image(d / "b.png", _photo(30, 40, 2))
    images.save_image(d / "c.png", _photo(31, 40, 3))  # another shape, same bucket with --bucket pad
    images.save_image(d / "d.png", _photo(40, 30, 4))  # portrait
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    images.save_image(tmp_path / "style.png", _photo(30, 30, 9)[::-1])
    return d


def _batch(inputs, tiny_weights, out, *options) -> int:
    return cli.main(["batch", str(inputs), "--style", str(inputs.parent / "style.png"), "-o", str(out),
                     "--weights", str(tiny_weights), "--size", "32", "--steps", "10", "--quiet", *map(str, options)])


def test_batch_command_skips_unreadable_inputs_and_resumes(inputs, tiny_weights, tmp_path, capsys):
    out = tmp_path / "out"
    assert _batch(inputs, tiny_weights, out) == 1  # broken.png failed
    err = capsys.readouterr().err
    assert "jaxstyle: error:" in err and "broken.png" in err
    assert "5 inputs: 4 written, 0 already done (skipped), 1 failed" in err
    shapes = {p.name: images.load_image(p).shape for p in out.iterdir()}
    assert shapes == {"a.png": (24, 32, 3), "b.png": (24, 32, 3), "c.png": (25, 32, 3), "d.png": (32, 24, 3)}
    # Interrupted runs resume: finished outputs are skipped, missing ones written.
    (out / "b.png").unlink()
    before = (out / "a.png").stat().st_mtime_ns
    (inputs / "broken.png").unlink()
    assert _batch(inputs, tiny_weights, out) == 0
    assert "4 inputs: 1 written, 3 already done (skipped), 0 failed" in capsys.readouterr().err
    assert (out / "b.png").exists() and (out / "a.png").stat().st_mtime_ns == before
    assert _batch(inputs, tiny_weights, out, "--overwrite") == 0
    assert "4 written" in capsys.readouterr().err


def test_batch_command_exact_buckets_equal_the_stylize_command(inputs, tiny_weights, tmp_path):
    # From noise, not from the content: started at the content, a few pixels have a gradient
    # near Adam's eps (1e-8), where its step g / (|g| + eps) turns the 1e-7 rounding
    # differences of a batched program into steps of up to 2 * lr (one of these photos
    # differs by 0.05 after 10 steps, as it would between two BLAS libraries).
    (inputs / "broken.png").unlink()
    assert _batch(inputs, tiny_weights, tmp_path / "out", "--bucket", "exact", "--batch-size", 3,
                  "--init", "noise") == 0
    for name in ("a.png", "c.png", "d.png"):
        single = tmp_path / f"single_{name}"
        assert cli.main(["stylize", str(inputs / name), "--style", str(inputs.parent / "style.png"),
                         "-o", str(single), "--weights", str(tiny_weights), "--size", "32", "--steps", "10",
                         "--init", "noise", "--quiet"]) == 0
        np.testing.assert_allclose(images.load_image(tmp_path / "out" / name), images.load_image(single),
                                   rtol=0, atol=LEVEL + 1e-6)


def test_sweep_command_writes_every_point_and_a_labelled_sheet(inputs, tiny_weights, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", str(inputs / "a.png"), "--style", str(inputs.parent / "style.png"), "-o", str(out),
            "--weights", str(tiny_weights), "--size", "32", "--steps", "10", "--quiet",
            "--style-weight", "1,1e4", "--tv-weight", "0", "5", "--content-weight", "2"]
    assert cli.main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["a__sheet.png", "a__style_weight-1__tv_weight-0.png", "a__style_weight-1__tv_weight-5.png",
                            "a__style_weight-10000__tv_weight-0.png", "a__style_weight-10000__tv_weight-5.png"])
    sheet = images.load_image(out / "a__sheet.png")
    assert sheet.shape[0] > 2 * 24 and sheet.shape[1] > 2 * 32  # 2 x 2 tiles with labels
    single = tmp_path / "single.png"
    assert cli.main(["stylize", str(inputs / "a.png"), "--style", str(inputs.parent / "style.png"), "-o",
                     str(single), "--weights", str(tiny_weights), "--size", "32", "--steps", "10", "--quiet",
                     "--style-weight", "1e4", "--tv-weight", "5", "--content-weight", "2"]) == 0
    np.testing.assert_allclose(images.load_image(out / "a__style_weight-10000__tv_weight-5.png"),
                               images.load_image(single), rtol=0, atol=LEVEL + 1e-6)
    settings = json.loads(images.read_metadata(out / "a__style_weight-10000__tv_weight-5.png")["settings"])
    assert settings["style_weight"] == 1e4 and settings["content_weight"] == 2
    assert cli.main(argv) == 2  # outputs exist
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["sweep", "c.png", "--style", "s.png", "-o", "o", "--style-weight", "3"], "give several values"),
    (["sweep", "c.png", "--style", "s.png", "-o", "o", "--style-weight", "a,b"], "expected float values"),
    (["batch", "c.png", "--style", "s.png", "-o", "o", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["batch", "c.png", "--style", "s.png", "-o", "o", "--bucket-step", "0"], "bucket step"),
    (["batch", "c.png", "--style", "s.png", "-o", "o", "--num-processes", "2"], "needs --distributed"),
])
def test_command_usage_errors(argv, words, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxstyle: error:") and words in err and len(err.strip().splitlines()) == 1


def test_two_processes_with_jax_distributed_share_the_inputs(inputs, tiny_weights, tmp_path):
    """Two `jaxstyle batch --distributed` processes on localhost (CPU, gloo): each writes its share."""
    (inputs / "broken.png").unlink()
    ran = run_distributed(["batch", str(inputs), "--style", str(inputs.parent / "style.png"), "-o",
                           str(tmp_path / "multi"), "--weights", str(tiny_weights), "--size", "32", "--steps", "10",
                           "--quiet"])
    assert [code for code, _ in ran] == [0, 0], ran
    errs = [err for _, err in ran]
    assert "process 0 of 2): 2 inputs: 2 written" in errs[0]  # a.png, c.png
    assert "process 1 of 2): 2 inputs: 2 written" in errs[1]  # b.png, d.png
    assert _batch(inputs, tiny_weights, tmp_path / "one") == 0
    for name in ("a.png", "b.png", "c.png", "d.png"):
        np.testing.assert_array_equal(images.load_image(tmp_path / "multi" / name),
                                      images.load_image(tmp_path / "one" / name))


def test_sweep_command_takes_masks(inputs, tiny_weights, tmp_path):
    left = np.zeros((30, 40, 3))
    left[:, :20] = 1
    images.save_image(tmp_path / "left.png", left)
    images.save_image(tmp_path / "right.png", 1 - left)
    images.save_image(tmp_path / "all.png", np.ones((30, 30, 3)))
    common = [str(inputs / "a.png"), "--style", str(inputs.parent / "style.png"), str(inputs / "d.png"),
              "--weights", str(tiny_weights), "--size", "32", "--steps", "10", "--quiet", "--content-mask",
              str(tmp_path / "left.png"), "--style-mask", str(tmp_path / "all.png"), "--content-mask",
              str(tmp_path / "right.png"), "--style-mask", str(tmp_path / "all.png")]
    assert cli.main(["sweep", *common, "-o", str(tmp_path / "sweep"), "--tv-weight", "0,5"]) == 0
    assert cli.main(["stylize", *common, "-o", str(tmp_path / "single.png"), "--tv-weight", "5"]) == 0
    np.testing.assert_allclose(images.load_image(tmp_path / "sweep" / "a__tv_weight-5.png"),
                               images.load_image(tmp_path / "single.png"), rtol=0, atol=4 * LEVEL)
