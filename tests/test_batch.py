"""Batches, sweeps and sharding: `jaxstyle.batch`, `jaxstyle.batch_io`, `jaxstyle.sharding`, and
the `jaxstyle batch` / `jaxstyle sweep` commands, on the tiny random network.

The reference is always the single-image `optimize.stylize`: item i of a batch
and point k of a sweep must equal it run alone with the same settings and seed.
Sharding over several devices needs JAX started with fake CPU devices, so those
checks run in subprocesses (`tests/sharded_check.py`, and the console script).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxstyle import batch, batch_io, cli, images, optimize, vgg, weights
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError

RTOL, ATOL = 1e-5, 1e-6  # vmapping changes the order of some float32 sums, nothing else
# Runs compared with single runs start from noise (`init="noise"`) or use L-BFGS: from the
# content image, a pixel whose gradient is near Adam's eps (1e-8) can turn those rounding
# differences into a step of up to 2 * lr (see test_batch_command_exact_buckets_...).
LEVEL = 1 / 255  # one step of an 8-bit PNG
HERE = pathlib.Path(__file__).parent
JAXSTYLE = pathlib.Path(sys.executable).with_name("jaxstyle")



def _photo(height: int, width: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x / (width - 1), y / (height - 1), 0.5 + 0.3 * np.sin(x / 5.0) * np.cos(y / 4.0)], -1)
    return np.clip(image + np.random.default_rng(seed).normal(0, 0.05, image.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def style() -> np.ndarray:
    return np.random.default_rng(7).random((30, 30, 3)).astype(np.float32)


# ----------------------------------------------------------------------------
# The library: a batch of N is N single runs, a sweep of K is K single runs


def test_batch_equals_single_runs_with_the_same_seeds(tiny, style):
    # Three landscape photos (one program, batches of 2: the second padded) and a portrait (another).
    contents = [_photo(30, 40, 1), _photo(30, 40, 2), _photo(30, 40, 3), _photo(40, 30, 4)]
    config = StylizeConfig(size=32, steps=12, init="noise")
    seeds = [5, 6, 7, 8]
    seen = []
    out = batch.stylize_batch(contents, style, tiny, config, seeds=seeds, batch_size=2, callback=seen.append)
    for content, seed, result in zip(contents, seeds, out):
        single = optimize.stylize(content, style, tiny, config.replace(seed=seed))
        assert result.shape == single.shape
        np.testing.assert_allclose(result, single, rtol=RTOL, atol=ATOL)
    assert out[3].shape == (32, 24, 3)
    assert {p.items for p in seen} == {(0, 1), (2,), (3,)}
    # Programs of 2 for the landscapes (the second batch padded), of 1 for the lone portrait.
    assert all(p.images.shape[0] == (1 if p.items == (3,) else 2) and p.losses.shape == (len(p.items),)
               for p in seen)
    assert np.abs(out[0] - out[1]).max() > 0.05  # different contents and seeds give different images


def test_batch_with_lbfgs_scales_averaging_and_colour_preservation(tiny, style):
    contents = [_photo(30, 40, 1), _photo(30, 40, 2)]
    for config in [StylizeConfig(size=32, steps=10, optimizer="lbfgs"),
                   StylizeConfig(size=32, steps=10, multiscale=True, scales=(24,), ema_decay=0.9,
                                 preserve_colors="luminance", init="noise")]:
        out = batch.stylize_batch(contents, style, tiny, config)
        for content, result in zip(contents, out):
            np.testing.assert_allclose(result, optimize.stylize(content, style, tiny, config), rtol=RTOL, atol=1e-5)


def test_sweep_equals_single_runs(tiny, style):
    content = _photo(30, 40, 1)
    config = StylizeConfig(size=32, steps=12, init="noise")
    grid = {"style_weight": [1.0, 1e3], "lr": [0.02, 0.05], "seed": [0, 1]}
    results = batch.sweep(content, style, tiny, config, grid=grid)
    assert [point for point, _ in results] == batch.grid_points(grid)
    assert len(results) == 8
    for point, image in results:
        np.testing.assert_allclose(image, optimize.stylize(content, style, tiny, config.replace(**point)),
                                   rtol=RTOL, atol=ATOL)
    assert np.abs(results[0][1] - results[4][1]).max() > 0.01  # the style weight matters


def test_a_batch_of_8_same_size_images_compiles_the_step_once(tiny, style):
    contents = [_photo(36, 44, seed) for seed in range(8)]  # a shape no other test uses
    config = StylizeConfig(size=44, steps=25)  # three chunks: 10, 10, 5 steps
    before = batch._run_batch_chunk._cache_size()
    batch.stylize_batch(contents, style, tiny, config)
    assert batch._run_batch_chunk._cache_size() == before + 1
    # Other weights, learning rate and seeds: the same program.
    batch.stylize_batch(contents, style, tiny, config.replace(style_weight=100.0, lr=0.05), seeds=range(8))
    assert batch._run_batch_chunk._cache_size() == before + 1


def test_an_item_that_becomes_nan_fails_alone(tiny, style):
    contents = [_photo(30, 40, 1), _photo(30, 40, 2)]
    contents[1][3, 3, 0] = np.nan
    config = StylizeConfig(size=32, steps=10, init="noise")
    good, bad = batch.stylize_batch(contents, style, tiny, config)
    assert isinstance(bad, optimize.NonFiniteLoss) and "item 1" in str(bad)
    np.testing.assert_allclose(good, optimize.stylize(contents[0], style, tiny, config), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("call, words", [
    (lambda net, s: batch.stylize_batch([], s, net), "no content images"),
    (lambda net, s: batch.stylize_batch([_photo(30, 40, 1)], s, net, seeds=[1, 2]), "2 seeds"),
    (lambda net, s: batch.stylize_batch([_photo(30, 40, 1)], s, net, batch_size=0), "`batch_size`"),
    (lambda net, s: batch.stylize_batch([np.zeros((30, 40))], s, net), "shape (30, 40)"),
    (lambda net, s: batch.sweep(_photo(30, 40, 1), s, net, grid={}), "empty"),
    (lambda net, s: batch.sweep(_photo(30, 40, 1), s, net, grid={"size": [32, 64]}), "cannot sweep `size`"),
    (lambda net, s: batch.sweep(_photo(30, 40, 1), s, net, grid={"seed": [0, 1]}), "use init 'noise'"),
    (lambda net, s: batch.sweep(_photo(30, 40, 1), s, net, grid={"tv_weight": [1, -1]}), "got -1"),
])
def test_bad_arguments_are_usage_errors(tiny, style, call, words):
    with pytest.raises(UsageError, match=None) as info:
        call(tiny, style)
    assert words in str(info.value)


def test_pure_losses_vmap_and_grad_directly(tiny, style):
    """The README's example: the loss functions are pure, so grad and vmap apply to them directly."""
    from jaxstyle import losses

    layers = ("relu1_1", "relu2_1")
    feats = jax.vmap(lambda im: tiny.features(im, layers))(np.stack([_photo(30, 40, s) for s in range(3)]))
    target = losses.gram_matrix(tiny.features(style, layers)["relu1_1"])
    per_image = jax.vmap(lambda f: losses.gram_distance(losses.gram_matrix(f), target))(feats["relu1_1"])
    loop = [losses.gram_distance(losses.gram_matrix(f), target) for f in feats["relu1_1"]]
    np.testing.assert_allclose(per_image, loop, rtol=1e-6)
    grad = jax.grad(lambda im: losses.gram_distance(losses.gram_matrix(tiny.features(im, layers)["relu1_1"]),
                                                    target))(_photo(30, 40, 0))
    assert grad.shape == (30, 40, 3) and np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


# ----------------------------------------------------------------------------
# Buckets, inputs, names, contact sheets


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


def test_resized_shape_is_the_rule_of_stylize():
    for shape in [(30, 40), (31, 40), (1000, 667), (667, 1000), (17, 300)]:
        for size in (32, 256, 512):
            assert batch_io.resized_shape(shape, size) == optimize.output_shape(shape, size)


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


def test_two_inputs_with_one_output_name_are_refused(tmp_path):
    with pytest.raises(UsageError, match="would both be written"):
        batch_io.output_paths([pathlib.Path("a/x.jpg"), pathlib.Path("b/x.png")], tmp_path, ".png")


def test_image_shape_reads_the_header_upright(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 40x30, shown 30x40
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path, exif=exif)
    assert batch_io.image_shape(path) == images.load_image(path).shape[:2] == (40, 30)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(UsageError, match="not an image"):
        batch_io.image_shape(tmp_path / "bad.png")


def test_contact_sheet_prints_the_labels():
    tiles = [np.full((20, 30, 3), 0.5, np.float32)] * 3
    sheet = batch_io.contact_sheet(tiles, ["a=1", "a=10", "a=100"], columns=3)
    other = batch_io.contact_sheet(tiles, ["b=1", "b=10", "b=100"], columns=3)
    assert sheet.dtype == np.float32 and sheet.shape[1] > 3 * 30 and sheet.shape[0] > 20
    text = sheet[25:]  # below the tiles: black text on white
    assert text.min() < 0.3 and np.abs(sheet - other).max() > 0.5
    assert batch_io.sweep_name("cat", {"style_weight": 1e4, "seed": 2}, ".png") == "cat__style_weight-10000__seed-2.png"


# ----------------------------------------------------------------------------
# The commands


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


# ----------------------------------------------------------------------------
# Several devices (fake CPU devices, in subprocesses) and several processes


def _env(devices: int) -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


@pytest.fixture(scope="module")
def sharded_facts() -> dict:
    """Run tests/sharded_check.py on 4 fake CPU devices; its own assert_allclose checks must pass."""
    run = subprocess.run([sys.executable, str(HERE / "sharded_check.py")], capture_output=True, text=True,
                         env=_env(4), timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_sharded_batch_equals_unsharded_and_is_split_over_4_devices(sharded_facts):
    assert sharded_facts["devices"] == 4
    # 6 images padded to 8, 2 per device.
    assert sharded_facts["batch"] == {"spec": ["batch"], "devices": 4, "shard_shapes": [[2, 24, 32, 3]]}
    assert sharded_facts["sweep"] == {"spec": ["batch"], "devices": 4, "shard_shapes": [[1, 24, 32, 3]]}


def test_image_split_by_rows_equals_unsharded(sharded_facts):
    # The assert_allclose checks ran in the subprocess; here, how the arrays were split.
    for key in ("rows_adam_64", "rows_lbfgs_64"):  # 64 rows: 16 per device
        assert sharded_facts[key] | {"max_abs_diff": 0} == {"spec": ["rows"], "devices": 4,
                                                             "shard_shapes": [[16, 48, 3]], "max_abs_diff": 0}
    # 40 rows: 2 devices, so that each holds 2**4 rows (relu5_1 is 4 poolings deep).
    assert sharded_facts["rows_adam_40"]["devices"] == 2
    assert sharded_facts["rows_adam_40"]["shard_shapes"] == [[20, 30, 3]]
    # 70 rows do not split evenly: the iterate comes back whole, the program still splits the work.
    assert sharded_facts["rows_adam_70"]["spec"] == [] and sharded_facts["rows_adam_70"]["max_abs_diff"] < 1e-5
    temp = sharded_facts["rows_temp_bytes"]
    assert temp["4"] < 0.5 * temp["1"]  # per-device scratch memory of a step: activations are split


def test_shard_image_option_of_the_console_script(inputs, tiny_weights, tmp_path):
    args = [str(inputs / "a.png"), "--style", str(inputs.parent / "style.png"), "--weights", str(tiny_weights),
            "--size", "64", "--steps", "10", "--quiet"]  # 48 rows: 3 devices of 16 rows (relu5_1)
    sharded = subprocess.run([str(JAXSTYLE), "stylize", *args, "-o", str(tmp_path / "rows.png"), "--shard-image"],
                             capture_output=True, text=True, env=_env(4), timeout=300)
    assert sharded.returncode == 0, sharded.stderr
    assert cli.main(["stylize", *args, "-o", str(tmp_path / "plain.png")]) == 0
    np.testing.assert_allclose(images.load_image(tmp_path / "rows.png"), images.load_image(tmp_path / "plain.png"),
                               rtol=0, atol=LEVEL + 1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_jax_distributed_share_the_inputs(inputs, tiny_weights, tmp_path):
    """Two `jaxstyle batch --distributed` processes on localhost (CPU, gloo): each writes its share."""
    (inputs / "broken.png").unlink()
    port = _free_port()
    common = ["batch", str(inputs), "--style", str(inputs.parent / "style.png"), "-o", str(tmp_path / "multi"),
              "--weights", str(tiny_weights), "--size", "32", "--steps", "10", "--quiet", "--distributed",
              "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2"]
    procs = [subprocess.Popen([str(JAXSTYLE), *common, "--process-id", str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(1)) for i in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert "process 0 of 2): 2 inputs: 2 written" in errs[0]  # a.png, c.png
    assert "process 1 of 2): 2 inputs: 2 written" in errs[1]  # b.png, d.png
    assert _batch(inputs, tiny_weights, tmp_path / "one") == 0
    for name in ("a.png", "b.png", "c.png", "d.png"):
        np.testing.assert_array_equal(images.load_image(tmp_path / "multi" / name),
                                      images.load_image(tmp_path / "one" / name))
