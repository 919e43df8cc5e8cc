"""Tests for the `jaxstyle` command line, end to end on the tiny random network.

Most runs call `jaxstyle.cli.main` in-process, so that the compiled programs
are shared between tests (they depend only on the image shape, the optimiser,
the pooling and the layer choice; loss weights and the learning rate are
traced). A few run the installed `jaxstyle` console script in a subprocess,
for exit codes and tracebacks as a user sees them.

Every option has a test that fails if the option were ignored: it changes the
output (or the files written) compared with a run at the defaults.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxstyle import __version__, cli, images, step, weights
from jaxstyle.config import RunOptions, StylizeConfig

SIZE = 32  # --size of most runs: 40x30 inputs give 32x24 outputs
OUT_HW = (24, 32)
STEPS = 10  # one chunk of `step.CHUNK` steps
LEVEL = 1 / 255  # one step of an 8-bit PNG
DIFFERS = 4 * LEVEL  # a changed option must move some pixel by more than this
JAXSTYLE = pathlib.Path(sys.executable).with_name("jaxstyle")  # the console script of this venv


def _photo(height: int = 30, width: int = 40, seed: int = 1) -> np.ndarray:
    """A photo-like image: smooth colour gradients with some texture and sensor noise."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x / (width - 1), y / (height - 1),
                      0.5 + 0.3 * np.sin(x / 5.0) * np.cos(y / 4.0)], axis=-1)
    return np.clip(image + np.random.default_rng(seed).normal(0, 0.05, image.shape), 0, 1)


def _painting(height: int = 30, width: int = 40, seed: int = 2) -> np.ndarray:
    """A painting-like image: coloured diagonal strokes and bands."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([0.5 + 0.45 * np.sin(0.9 * x + 0.4 * y), 0.5 + 0.45 * np.cos(0.7 * y),
                      0.1 + 0.8 * ((x // 5) % 2)], axis=-1)
    return np.clip(image + np.random.default_rng(seed).normal(0, 0.03, image.shape), 0, 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Input files: content photo, style painting, an init image, a text file named .png."""
    d = tmp_path_factory.mktemp("cli_inputs")
    paths = {"content": d / "photo.png", "style": d / "painting.png", "init": d / "start.png",
             "text": d / "notes.png"}
    images.save_image(paths["content"], _photo())
    images.save_image(paths["style"], _painting())
    images.save_image(paths["init"], 1.0 - _photo(seed=3)[::-1])  # far from the content
    paths["text"].write_text("not an image\n")
    return paths


def _args(files, weights_path, out, *options) -> list[str]:
    return ["stylize", str(files["content"]), "--style", str(files["style"]), "-o", str(out),
            "--weights", str(weights_path), "--size", str(SIZE), *map(str, options)]


def _stylize(files, weights_path, out, *options, steps: int = STEPS, quiet: bool = True) -> np.ndarray:
    """Run `jaxstyle stylize` in-process, check it succeeded, return the output's pixels."""
    argv = _args(files, weights_path, out, "--steps", steps, *options) + (["--quiet"] if quiet else [])
    assert cli.main(argv) == 0
    return images.load_image(out)


def _content_at_output_size(files) -> np.ndarray:
    return np.asarray(step.resize(images.load_image(files["content"]), OUT_HW))


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _total_variation(image: np.ndarray) -> float:
    return float(np.abs(np.diff(image, axis=0)).mean() + np.abs(np.diff(image, axis=1)).mean())


def _assert_differs(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) > DIFFERS, "the option did not change the output"


@pytest.fixture(scope="module")
def baseline(files, tiny_weights, tmp_path_factory) -> np.ndarray:
    """The output at default settings (apart from --size and --steps)."""
    return _stylize(files, tiny_weights, tmp_path_factory.mktemp("baseline") / "out.png")


# ----------------------------------------------------------------------------
# A run and its outputs


def test_size_sets_the_longest_side(files, tiny_weights, baseline, tmp_path):
    assert baseline.shape == (*OUT_HW, 3)
    assert np.all(np.isfinite(baseline)) and baseline.min() >= 0 and baseline.max() <= 1
    assert _stylize(files, tiny_weights, tmp_path / "big.png", "--size", 48, steps=1).shape == (36, 48, 3)


@pytest.mark.parametrize("suffix, steps", [(".json", 20), (".csv", 7)])
def test_log_has_one_finite_decreasing_loss_per_step(files, tiny_weights, tmp_path, suffix, steps):
    log = tmp_path / f"losses{suffix}"
    _stylize(files, tiny_weights, tmp_path / "out.png", "--log", log, steps=steps)
    if suffix == ".json":
        rows = json.loads(log.read_text())
    else:
        with log.open(newline="") as f:
            rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(steps))
    loss = np.array([float(r["loss"]) for r in rows])
    assert np.all(np.isfinite(loss)) and np.all(loss > 0)
    assert loss[-1] < loss[0]  # Adam from the content image lowers the objective overall


def test_content_weight_keeps_the_output_closer_to_the_content(files, tiny_weights, baseline, tmp_path):
    content = _content_at_output_size(files)
    heavy = _stylize(files, tiny_weights, tmp_path / "heavy.png", "--content-weight", 100)
    _assert_differs(heavy, baseline)
    assert _distance(heavy, content) < _distance(baseline, content)


def test_style_weight_moves_the_output_away_from_the_content(files, tiny_weights, baseline, tmp_path):
    content = _content_at_output_size(files)
    none = _stylize(files, tiny_weights, tmp_path / "none.png", "--style-weight", 0)
    heavy = _stylize(files, tiny_weights, tmp_path / "heavy.png", "--style-weight", 100)
    _assert_differs(none, baseline)
    _assert_differs(heavy, baseline)
    # Adam moves each pixel about `lr` per step whatever the loss scale, so the
    # distance saturates as the style weight grows: compare the ends.
    assert _distance(none, content) < 0.8 * _distance(baseline, content)
    assert _distance(none, content) < 0.8 * _distance(heavy, content)


def test_tv_weight_smooths_the_output(files, tiny_weights, baseline, tmp_path):
    smooth = _stylize(files, tiny_weights, tmp_path / "smooth.png", "--tv-weight", 200)
    rough = _stylize(files, tiny_weights, tmp_path / "rough.png", "--tv-weight", 0)
    _assert_differs(smooth, baseline)
    _assert_differs(rough, baseline)
    assert _total_variation(smooth) < 0.8 * _total_variation(baseline)
    assert _total_variation(smooth) < 0.8 * _total_variation(rough)


def test_content_layers_change_the_output(files, tiny_weights, baseline, tmp_path):
    _assert_differs(_stylize(files, tiny_weights, tmp_path / "out.png", "--content-layers", "relu3_1"), baseline)


def test_style_layers_change_the_output(files, tiny_weights, baseline, tmp_path):
    # Comma-separated, as the help allows; space-separated is in test_style_layer_weights.
    _assert_differs(_stylize(files, tiny_weights, tmp_path / "out.png", "--style-layers", "relu1_1,relu2_1"),
                    baseline)


def test_style_layer_weights_change_the_output(files, tiny_weights, baseline, tmp_path):
    out = _stylize(files, tiny_weights, tmp_path / "out.png", "--style-layer-weights", "1", "0", "0", "0", "0")
    _assert_differs(out, baseline)


def test_lbfgs_differs_from_adam_and_stays_in_range(files, tiny_weights, baseline, tmp_path):
    log = tmp_path / "lbfgs.json"
    out = _stylize(files, tiny_weights, tmp_path / "out.png", "--optimizer", "lbfgs", "--log", log)
    _assert_differs(out, baseline)
    assert out.min() >= 0 and out.max() <= 1
    loss = [r["loss"] for r in json.loads(log.read_text())]
    assert len(loss) == STEPS and all(map(math.isfinite, loss)) and loss[-1] < loss[0]


def test_lr_sets_how_far_adam_moves(files, tiny_weights, baseline, tmp_path):
    content = _content_at_output_size(files)
    slow = _stylize(files, tiny_weights, tmp_path / "slow.png", "--lr", 0.002)
    fast = _stylize(files, tiny_weights, tmp_path / "fast.png", "--lr", 0.05)
    _assert_differs(slow, baseline)
    _assert_differs(fast, baseline)
    assert _distance(slow, content) < _distance(baseline, content) < _distance(fast, content)


def test_init_noise_differs_from_content(files, tiny_weights, baseline, tmp_path):
    noise = _stylize(files, tiny_weights, tmp_path / "noise.png", "--init", "noise")
    _assert_differs(noise, baseline)
    content = _content_at_output_size(files)
    assert _distance(noise, content) > 2 * _distance(baseline, content)


def test_init_path_is_the_starting_image(files, tiny_weights, tmp_path):
    out = _stylize(files, tiny_weights, tmp_path / "out.png", "--init", files["init"], "--lr", 1e-6, steps=1)
    start = np.asarray(step.resize(images.load_image(files["init"]), OUT_HW))
    np.testing.assert_allclose(out, start, rtol=0, atol=LEVEL + 1e-5)  # one Adam step of 1e-6, then 8 bits
    assert _distance(out, _content_at_output_size(files)) > 0.2


def test_seed_makes_noise_reproducible(files, tiny_weights, tmp_path):
    outs = [tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"]
    for out, seed in zip(outs, (1, 1, 2)):
        _stylize(files, tiny_weights, out, "--init", "noise", "--seed", seed, steps=2)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    _assert_differs(images.load_image(outs[0]), images.load_image(outs[2]))


def test_avg_pooling_changes_the_output(files, tiny_weights, baseline, tmp_path):
    _assert_differs(_stylize(files, tiny_weights, tmp_path / "out.png", "--pooling", "avg"), baseline)


def test_style_scale_changes_the_output(files, tiny_weights, baseline, tmp_path):
    _assert_differs(_stylize(files, tiny_weights, tmp_path / "out.png", "--style-scale", 2), baseline)


def test_remat_gives_the_same_output_with_the_low_memory_flags(files, tiny_weights, baseline, tmp_path, monkeypatch):
    from jaxstyle import runtime

    calls = []
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored after the test
    original = runtime.configure
    monkeypatch.setattr(runtime, "configure", lambda **kw: calls.append(kw) or original(**kw))
    out = _stylize(files, tiny_weights, tmp_path / "out.png", "--remat")
    assert calls == [{"low_memory": True}]
    # The same objective computed in pieces (tests/test_speed.py compares gradients at 1e-4): same picture.
    np.testing.assert_allclose(out, baseline, atol=2 / 255)


def test_save_every_writes_intermediate_images(files, tiny_weights, tmp_path):
    out = tmp_path / "run.png"
    final = _stylize(files, tiny_weights, out, "--save-every", 5, steps=20)
    saved = sorted(p.name for p in tmp_path.iterdir())
    # Named after the full output name, so run.png's and run.jpg's snapshots never mix.
    assert saved == ["run.png", "run.png.step00005.png", "run.png.step00010.png", "run.png.step00015.png"]
    first, last = (images.load_image(tmp_path / f"run.png.step000{s}.png") for s in ("05", "15"))
    assert first.shape == last.shape == final.shape
    _assert_differs(first, last)  # snapshots of different steps, not one image written three times


def test_existing_output_is_refused_without_overwrite(files, tiny_weights, tmp_path, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    argv = _args(files, tiny_weights, out, "--steps", 1, "--quiet")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxstyle: error:") and "--overwrite" in err and err.count("\n") == 1
    assert out.read_bytes() == b"precious"
    assert cli.main(argv + ["--overwrite"]) == 0
    assert images.load_image(out).shape == (*OUT_HW, 3)


def test_progress_bar_on_stderr_unless_quiet(files, tiny_weights, tmp_path, capsys):
    _stylize(files, tiny_weights, tmp_path / "loud.png", steps=2, quiet=False)
    captured = capsys.readouterr()
    assert "step" in captured.err and "2/2" in captured.err
    assert "wrote" in captured.err and captured.out == ""
    _stylize(files, tiny_weights, tmp_path / "quiet.png", steps=2, quiet=True)
    captured = capsys.readouterr()
    assert "step" not in captured.err and "/s" not in captured.err and "wrote" not in captured.err
    assert captured.out == ""


def test_metadata_records_the_settings(files, tiny_weights, tmp_path):
    out = tmp_path / "out.png"
    _stylize(files, tiny_weights, out, "--lr", 0.03, "--content-weight", 2.5, "--style-weight", 7,
             "--tv-weight", 0.5, "--style-layer-weights", "1,2,3,4,5", "--init", "noise", "--seed", 42, steps=3)
    meta = images.read_metadata(out)
    settings = json.loads(meta["settings"])
    expected = StylizeConfig(size=SIZE, steps=3, lr=0.03, content_weight=2.5, style_weight=7.0, tv_weight=0.5,
                             style_layer_weights=(1.0, 2.0, 3.0, 4.0, 5.0), init="noise", seed=42)
    assert settings == json.loads(json.dumps(dataclasses.asdict(expected)))
    assert meta["seed"] == "42"
    assert meta["jaxstyle"] == __version__
    assert (meta["content"], meta["style"]) == (files["content"].name, files["style"].name)
    with np.load(tiny_weights, allow_pickle=False) as z:  # the SHA-256 of the tensors, computed afresh
        tensors = {k: z[k] for k in z.files if k != "__meta__"}
    assert meta["weights_sha256"] == weights.params_sha256(tensors) == weights.load(tiny_weights)[1]["params_sha256"]


# ----------------------------------------------------------------------------
# Errors: one line on stderr, exit code 2, nothing written


def _error_cases():
    """(id, argv builder, words the message must contain); the builder takes (files, weights, out)."""
    base = lambda f, w, out, *extra: _args(f, w, out, "--steps", 1, "--quiet", *extra)  # noqa: E731
    return [
        ("missing content", lambda f, w, out: ["stylize", str(out.parent / "nope.jpg"), "--style", str(f["style"]),
                                               "-o", str(out), "--weights", str(w)], ["nope.jpg", "does not exist"]),
        ("style not an image", lambda f, w, out: ["stylize", str(f["content"]), "--style", str(f["text"]),
                                                  "-o", str(out), "--weights", str(w)], ["notes.png"]),
        ("output parent is a file", lambda f, w, out: base(f, w, f["content"] / "out.png"), ["photo.png", "not a directory"]),
        ("unknown extension", lambda f, w, out: base(f, w, out.with_suffix(".xyz")), [".xyz"]),
        ("zero steps", lambda f, w, out: base(f, w, out, "--steps", 0), ["steps", "0"]),
        ("negative style weight", lambda f, w, out: base(f, w, out, "--style-weight", -1), ["--style-weight", "-1"]),
        ("unknown option", lambda f, w, out: base(f, w, out, "--colour", "red"), ["--colour"]),
        ("unknown content layer", lambda f, w, out: base(f, w, out, "--content-layers", "relu9_9"), ["relu9_9"]),
        ("unknown style layer", lambda f, w, out: base(f, w, out, "--style-layers", "relu1_1", "pool7"), ["pool7"]),
        ("style layer weights count", lambda f, w, out: base(f, w, out, "--style-layer-weights", "1,2"),
         ["2 weights", "5 style layers"]),
        ("unknown optimizer", lambda f, w, out: base(f, w, out, "--optimizer", "sgd"), ["sgd"]),
        ("size too small", lambda f, w, out: base(f, w, out, "--size", 8), ["size", "8"]),
        ("missing init image", lambda f, w, out: base(f, w, out, "--init", "start.jpeg"), ["start.jpeg"]),
        ("negative save-every", lambda f, w, out: base(f, w, out, "--save-every", -5), ["save-every", "-5"]),
        ("log extension", lambda f, w, out: base(f, w, out, "--log", "losses.txt"), ["losses.txt"]),
        ("remat with shard-image", lambda f, w, out: base(f, w, out, "--remat", "--shard-image"),
         ["--remat", "--shard-image", "use one of them"]),
        ("no subcommand", lambda f, w, out: [], ["command"]),
    ]


@pytest.mark.parametrize("build, words", [c[1:] for c in _error_cases()], ids=[c[0] for c in _error_cases()])
def test_usage_errors_are_one_line_with_exit_code_2(files, tiny_weights, tmp_path, capsys, build, words):
    out = tmp_path / "out.png"
    code = cli.main(build(files, tiny_weights, out))
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("jaxstyle: error:") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    for word in words:
        assert word in captured.err
    assert list(tmp_path.iterdir()) == []  # neither OUT nor a temporary file nor a snapshot


def test_missing_weights_is_one_line_with_exit_code_1(files, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert cli.main(_args(files, tmp_path / "absent.npz", out, "--quiet")) == 1
    err = capsys.readouterr().err
    assert err.startswith("jaxstyle: error: no weights file") and "absent.npz" in err and err.count("\n") == 1
    assert not out.exists()


def test_an_unwritable_log_is_refused_before_any_compute(files, tiny_weights, tmp_path, capsys):
    out = tmp_path / "out.png"
    argv = _args(files, tiny_weights, out, "--steps", 1, "--quiet", "--log", files["content"] / "log.json")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxstyle: error:") and "log.json" in err and "not a directory" in err
    assert err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_adds_the_traceback_and_keeps_the_exit_code(files, tiny_weights, tmp_path, where, capsys):
    argv = _args(files, tiny_weights, tmp_path / "out.png")
    argv[1] = str(tmp_path / "nope.png")
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    assert cli.main(argv) == 2  # a usage error stays one, with or without --debug
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "UsageError" in err
    assert err.strip().splitlines()[-1].startswith("jaxstyle: error:") and "nope.png" in err


def test_every_config_field_is_an_option_of_its_type():
    """The parser is derived from `StylizeConfig`: each field a flag, parsed to the field's type."""
    parser = cli.build_parser()
    required = ["stylize", "c.png", "--style", "s.png", "-o", "o.png"]
    for f in dataclasses.fields(StylizeConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            assert getattr(parser.parse_args([*required, flag]), f.name) is True
            assert getattr(parser.parse_args([*required, "--no-" + flag[2:]]), f.name) is False
        elif isinstance(f.default, tuple):
            item = float if "float" in str(f.type) else int if "int" in str(f.type) else str
            groups = getattr(parser.parse_args([*required, flag, "3,4", "5"]), f.name)
            parsed = [x for group in groups for x in group]
            assert parsed == [item("3"), item("4"), item("5")] and all(type(x) is item for x in parsed), f.name
        elif "choices" in f.metadata:
            for choice in f.metadata["choices"]:
                assert getattr(parser.parse_args([*required, flag, choice]), f.name) == choice
        else:
            value = getattr(parser.parse_args([*required, flag, "17"]), f.name)
            assert type(value) is type(f.default) and value == type(f.default)("17"), f.name


RUN_COMMANDS = {
    "stylize": ["stylize", "c.png", "--style", "s.png", "-o", "o.png"],
    "demo": ["demo"],
    "batch": ["batch", "photos", "--style", "s.png", "-o", "out"],
    "sweep": ["sweep", "c.png", "--style", "s.png", "-o", "out", "--lr", "0.01,0.02"],
}


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_every_run_option_is_declared_once_and_taken_by_every_command(command):
    """`RunOptions` is the one declaration: each field is a flag of every command that optimises."""
    parser = cli.build_parser()
    required = RUN_COMMANDS[command]
    assert cli.config_from_args(parser.parse_args(required), RunOptions) == RunOptions()
    given = {"weights": "w.npz", "overwrite": True, "resume": True, "checkpoint_every": 7, "save_every": 3,
             "log": "loss.csv", "quiet": True, "shard_image": True, "max_pixels": 1000, "max_memory": 2.5,
             "png_bits": 16, "serve": "0.0.0.0:8000"}
    assert set(given) == {f.name for f in dataclasses.fields(RunOptions)}
    argv = [*required]
    for name, value in given.items():
        argv += [cli.flag(name)] if value is True else [cli.flag(name), str(value)]
    assert cli.config_from_args(parser.parse_args(argv), RunOptions) == RunOptions(**given)


def test_library_messages_are_worded_as_flags():
    assert cli.as_flags("`style_blend` has 3 weights; raise `size` or `max_pixels`; lower `lr`") == \
        "--style-blend has 3 weights; raise --size or --max-pixels; lower --lr"
    assert cli.as_flags("unknown `foo`, code `print`") == "unknown `foo`, code `print`"  # not a setting: kept


def _messages(files, tmp_path):
    """(id, argv, exit code, words in the one line, words not in it): refusals a user can act on."""
    wide = tmp_path / "wide.png"
    images.save_image(wide, np.full((40, 2000, 3), 0.5))
    (tmp_path / "fifo.png").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "fifo.png")
    out = tmp_path / "out.png"
    run = lambda *extra: [*_args(files, "WEIGHTS", out, "--steps", 1, "--quiet"), *map(str, extra)]  # noqa: E731
    return [
        ("style scale", run("--style-scale", 1000, "--size", 48), 2, ["--style-scale 1000", "use --style-scale"],
         ["--size 48 needs"]),
        ("pixel limit", run("--max-pixels", 100), 2, ["than the limit of 100", "raise --max-pixels"], []),
        ("device file", [*run()[:1], "/dev/zero", *run()[2:]], 2, ["'/dev/zero' is not a regular file"], ["empty"]),
        ("fifo", [*run()[:1], str(tmp_path / "fifo.png"), *run()[2:]], 2, ["is not a regular file"], ["empty"]),
        ("proc", [*_args(files, "WEIGHTS", "/proc/out.png", "--steps", 1)], 2,
         ["cannot create a file in '/proc'"], ["not writable"]),
        ("no file name", [*_args(files, "WEIGHTS", tmp_path / ".png", "--steps", 1)], 2,
         ["has an extension but no name", "out.png"], ["extension ''"]),
        ("thin image", [*run()[:1], str(wide), *run()[2:], "--size", "64"], 2,
         ["the output is 64x1 pixels", "raise --size to at least 775"], ["`size`"]),
        ("weights not weights", run("--weights", files["text"]), 1, ["notes.png is not a jaxstyle weights file"],
         ["allow_pickle", "weights fetch"]),
        ("batch into a file", ["batch", str(files["content"]), "--style", str(files["style"]), "-o",
                               str(files["style"]), "--weights", "WEIGHTS"], 2,
         ["the output folder", "painting.png' is a file"], ["probe", ".jaxstyle-check"]),
    ]


@pytest.mark.parametrize("case", range(9))
def test_refusals_name_the_option_to_change(files, tiny_weights, tmp_path, capsys, case):
    name, argv, code, words, absent = _messages(files, tmp_path)[case]
    argv = [str(tiny_weights) if a == "WEIGHTS" else a for a in argv]
    assert cli.main(argv) == code, name
    err = capsys.readouterr().err
    assert err.startswith("jaxstyle: error:") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (name, err)
    for word in absent:
        assert word not in err, (name, err)


def test_the_pixel_limit_can_be_raised(files, tiny_weights, tmp_path):
    assert cli.main(_args(files, tiny_weights, tmp_path / "out.png", "--steps", 1, "--quiet",
                          "--max-pixels", 30 * 40)) == 0


def test_help_and_version_exit_0(capsys):
    for argv in (["--version"], ["demo", "--help"], ["stylize", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"jaxstyle {__version__}" in out
    for flag in ("--style-weight", "--tv-weight", "--style-layer-weights", "--save-every", "--overwrite"):
        assert flag in out
    assert "(default: 300)" in out and "(default: adam)" in out  # defaults come from StylizeConfig


# ----------------------------------------------------------------------------
# The console script, as a user runs it


def _script(*argv, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([str(JAXSTYLE), *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=env)


def test_script_runs_end_to_end(files, tiny_weights, tmp_path):
    out = tmp_path / "out.png"
    proc = _script(*_args(files, tiny_weights, out, "--steps", 2, "--quiet"))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert images.load_image(out).shape == (*OUT_HW, 3)


def test_script_usage_error_exit_code_and_debug_traceback(files, tiny_weights, tmp_path):
    argv = _args(files, tiny_weights, tmp_path / "out.png")
    argv[1] = str(tmp_path / "nope.png")
    proc = _script(*argv)
    assert proc.returncode == 2
    assert proc.stderr.startswith("jaxstyle: error:") and proc.stderr.count("\n") == 1, proc.stderr
    proc = _script("--debug", *argv)
    assert proc.returncode == 2  # the same exit code, with the traceback
    assert "Traceback" in proc.stderr and "nope.png" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_script_version_and_demo_help():
    proc = _script("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"jaxstyle {__version__}"
    proc = _script("demo", "--help")
    assert proc.returncode == 0 and "chelsea.png" in proc.stdout and proc.stderr == ""


def test_python_m_jaxstyle_is_the_same_command(files, tiny_weights, tmp_path):
    """`python -m jaxstyle` works where the console script is not installed (e.g. a GPU machine's image)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "jaxstyle", "--version"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == f"jaxstyle {__version__}"
    argv = _args(files, tiny_weights, tmp_path / "out.png")
    argv[1] = str(tmp_path / "nope.png")
    proc = subprocess.run([sys.executable, "-m", "jaxstyle", *map(str, argv)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2 and proc.stderr.startswith("jaxstyle: error:") and "nope.png" in proc.stderr


def test_a_transparent_content_gives_a_transparent_output(files, tiny_weights, tmp_path):
    """The optimisation sees the content over white; the output carries the content's alpha, resized."""
    rgba = np.asarray(Image.open(files["content"]).convert("RGBA")).copy()
    rgba[..., 3] = 0
    rgba[:, 20:, 3] = 255  # 40x30: the right half opaque
    content = tmp_path / "cut-out.png"
    Image.fromarray(rgba).save(content)
    out = tmp_path / "out.png"
    argv = _args(files, tiny_weights, out, "--steps", 1, "--quiet")
    argv[1] = str(content)
    assert cli.main(argv) == 0
    alpha = images.load_alpha(out)
    assert alpha.shape == OUT_HW
    # 32x24 output: columns 0-15 come from the transparent half, 16-31 from the opaque one (Lanczos
    # rings for a few pixels around the edge).
    np.testing.assert_array_equal(alpha[:, :12], 0)
    np.testing.assert_array_equal(alpha[:, 20:], 1)
    assert cli.main(_args(files, tiny_weights, tmp_path / "plain.png", "--steps", 1, "--quiet")) == 0
    assert images.load_alpha(tmp_path / "plain.png") is None  # an opaque content stays opaque
    # `batch` too, with an opaque photo beside it in the same program.
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cut-out.png").write_bytes(content.read_bytes())
    (photos / "opaque.png").write_bytes(files["content"].read_bytes())
    assert cli.main(["batch", str(photos), "--style", str(files["style"]), "-o", str(tmp_path / "out"), "--size",
                     str(SIZE), "--steps", "1", "--weights", str(tiny_weights), "--quiet"]) == 0
    np.testing.assert_array_equal(images.load_alpha(tmp_path / "out" / "cut-out.png"), alpha)
    assert images.load_alpha(tmp_path / "out" / "opaque.png") is None
