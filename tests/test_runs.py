"""Runs that fail, are interrupted or are resumed, through the command line.

- A NaN loss stops the run: exit code 1, one line, the last finite image kept.
- Ctrl-C (SIGINT to the console script) keeps the current image and a
  checkpoint, exit code 130.
- ``--resume`` continues from the checkpoint and gives the image an
  uninterrupted run gives, bit for bit (the same compiled programs on the same
  values; XLA:CPU is deterministic), for Adam, L-BFGS, coarse-to-fine and
  iterate averaging. A checkpoint of other settings or inputs is refused.
- Sizes beyond the machine's memory and other bad options are refused before
  any compute, as one line with exit code 2 (``--debug``: the traceback).

All runs use the tiny random network at 32 px (`conftest.tiny_weights`).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxstyle import checkpoint, cli, images, memory, optimize, vgg, weights
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError

SIZE = 32  # 40x30 inputs give 32x24 outputs
OUT_HW = (24, 32)
JAXSTYLE = pathlib.Path(sys.executable).with_name("jaxstyle")  # the console script of this venv
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _picture(seed: int, height: int = 30, width: int = 40) -> np.ndarray:
    """Smooth colour bands with some noise: an image the network has something to say about."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([0.5 + 0.4 * np.sin(x / (3 + seed) + y / 7), y / (height - 1), (x // (4 + seed)) % 2], -1)
    return np.clip(0.8 * image + np.random.default_rng(seed).normal(0, 0.05, image.shape), 0, 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, pathlib.Path]:
    d = tmp_path_factory.mktemp("run_inputs")
    paths = {"content": d / "photo.png", "style": d / "painting.png", "other": d / "other.png",
             "text": d / "notes.png", "mask": d / "mask.png"}
    for seed, key in enumerate(("content", "style", "other"), 1):
        images.save_image(paths[key], _picture(seed))
    images.save_image(paths["mask"], np.ones((30, 40, 3)))
    paths["text"].write_text("not an image\n")
    return paths


@pytest.fixture(scope="module")
def huge_weights(tiny_weights, tmp_path_factory) -> pathlib.Path:
    """The tiny network with every parameter times 1e30: the first activations overflow to Inf."""
    params, meta = weights.load(tiny_weights)
    flat = {k: v * np.float32(1e30) for k, v in weights.flatten(params).items()}
    path = tmp_path_factory.mktemp("huge_weights") / "huge.npz"
    weights.save(path, flat, architecture="tiny", preprocessing="caffe", source="tiny times 1e30")
    return path


def _args(files, weights_path, out, *options) -> list[str]:
    return ["stylize", str(files["content"]), "--style", str(files["style"]), "-o", str(out),
            "--weights", str(weights_path), "--size", str(SIZE), "--quiet", *map(str, options)]


def _one_line_error(err: str) -> bool:
    return err.startswith("jaxstyle: error: ") and err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------
# NaN or Inf loss


def test_non_finite_loss_exits_1_and_keeps_the_last_finite_image(files, huge_weights, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert cli.main(_args(files, huge_weights, out, "--steps", 30, "--checkpoint-every", 10)) == 1
    err = capsys.readouterr().err
    assert _one_line_error(err), err
    assert "NaN or Inf" in err and "out.last-finite.png" in err and "--lr" in err
    kept = tmp_path / "out.last-finite.png"
    assert images.load_image(kept).shape == (*OUT_HW, 3)
    assert images.read_metadata(kept)["step"] == "0"  # the overflow comes at the first step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.last-finite.png"]  # no OUT, no checkpoint


# ----------------------------------------------------------------------------
# Ctrl-C


def test_sigint_exits_130_and_keeps_the_image_and_a_checkpoint(files, tiny_weights, tmp_path):
    out = tmp_path / "out.png"
    ckpt = tmp_path / "out.checkpoint.npz"
    argv = _args(files, tiny_weights, out, "--steps", 10**8, "--checkpoint-every", 10)
    proc = subprocess.Popen([str(JAXSTYLE), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    try:
        deadline = time.monotonic() + 90
        while not ckpt.exists():  # the first checkpoint: it is stepping now
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 90 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1
    assert "interrupted at step" in stderr and "out.interrupted.png" in stderr and "--resume" in stderr
    assert not out.exists()
    interrupted = tmp_path / "out.interrupted.png"
    assert images.load_image(interrupted).shape == (*OUT_HW, 3)
    # The checkpoint is that of the interrupted image's step, and fits this run.
    step = int(images.read_metadata(interrupted)["step"])
    config = StylizeConfig(size=SIZE, steps=10**8)
    run = checkpoint.run_record(config, [("content", files["content"]), ("style 1", files["style"])],
                                weights.load(tiny_weights)[1]["params_sha256"])
    state, history = checkpoint.load(ckpt, run, config, (30, 40, 3))
    assert state.step == step >= 10 and state.scale == 0 and history.shape == (step,)


# ----------------------------------------------------------------------------
# --resume


def _interrupt_after_checkpoints(monkeypatch, n: int) -> None:
    """Make the run raise KeyboardInterrupt (as Ctrl-C does) right after its n-th checkpoint."""
    save, calls = checkpoint.save, []

    def save_then_interrupt(*args, **kwargs):
        save(*args, **kwargs)
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)


# (options, the checkpoint after which the run is interrupted): 40 steps per scale, checkpoints every 20.
RESUME_CASES = {
    "adam": ((), 1),
    "lbfgs": (("--optimizer", "lbfgs"), 1),
    "multiscale": (("--multiscale", "--scales", 24), 3),  # interrupted at step 20 of the second scale
    "ema": (("--ema-decay", 0.9), 1),
}


@pytest.mark.parametrize("options, n", RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_resume_gives_the_uninterrupted_result(files, tiny_weights, tmp_path, monkeypatch, capsys, options, n):
    def run(name, *extra):
        out = tmp_path / name / "out.tif"  # 16 bits per channel
        argv = _args(files, tiny_weights, out, "--steps", 40, "--checkpoint-every", 20, "--log",
                     out.with_suffix(".json"), *options, *extra)
        return out, cli.main(argv)

    whole, code = run("whole")
    assert code == 0
    with monkeypatch.context() as m:
        _interrupt_after_checkpoints(m, n)
        resumed, code = run("resumed")
    assert code == 130
    ckpt = resumed.with_name("out.checkpoint.npz")
    assert ckpt.exists() and not resumed.exists()
    assert "--resume" in capsys.readouterr().err
    resumed, code = run("resumed", "--resume")
    assert code == 0
    assert not ckpt.exists()  # removed when the run finishes
    # Bitwise (atol 0) at 16 bits, and so is every logged loss before and after the interruption.
    np.testing.assert_array_equal(images.load_image(resumed), images.load_image(whole))
    log = json.loads(resumed.with_suffix(".json").read_text())
    assert log == json.loads(whole.with_suffix(".json").read_text())
    assert len(log) == 40 * (2 if "--multiscale" in options else 1)


def test_checkpoint_round_trip_is_exact_in_float32(files, tiny_weights, tmp_path):
    """The library path: resume from a saved and reloaded checkpoint, compared in float32 with atol 0."""
    params, meta = weights.load(tiny_weights)
    network = optimize.Network(weights.model_for(meta), params)
    content, style = images.load_image(files["content"]), images.load_image(files["style"])
    config = StylizeConfig(size=SIZE, steps=30, optimizer="lbfgs", ema_decay=0.5)
    run = checkpoint.run_record(config, [("content", files["content"]), ("style 1", files["style"])],
                                meta["params_sha256"])
    reports = []
    whole = optimize.stylize(content, style, network, config, callback=reports.append)
    path = tmp_path / "run.checkpoint.npz"
    checkpoint.save(path, reports[0].checkpoint, run, reports[0].losses)
    state, history = checkpoint.load(path, run, config, content.shape)
    np.testing.assert_array_equal(history, reports[0].losses)
    saved = reports[0].checkpoint
    assert (state.scale, state.step) == (saved.scale, saved.step) == (0, 10)
    for a, b in zip(jax.tree.leaves((state.image, state.state, state.ema)),
                    jax.tree.leaves((saved.image, saved.state, saved.ema)), strict=True):
        np.testing.assert_array_equal(a, b)
    resumed = optimize.stylize(content, style, network, config, resume=state)
    np.testing.assert_array_equal(resumed, whole)


@pytest.fixture
def interrupted(files, tiny_weights, tmp_path, monkeypatch) -> pathlib.Path:
    """OUT of a run (40 steps) interrupted after its checkpoint at step 20; OUT does not exist."""
    out = tmp_path / "out.png"
    with monkeypatch.context() as m:
        _interrupt_after_checkpoints(m, 1)
        assert cli.main(_args(files, tiny_weights, out, "--steps", 40, "--checkpoint-every", 20)) == 130
    assert out.with_name("out.checkpoint.npz").exists()
    return out


@pytest.mark.parametrize("change, words", [
    (("--lr", 0.03), ["`lr` was 0.02, now 0.03"]),
    (("--steps", 50), ["`steps` was 40, now 50"]),
    (("--style-layers", "relu1_1,relu2_1"), ["`style_layers` was relu1_1,relu2_1,relu3_1,relu4_1,relu5_1"]),
    (("--style", "OTHER"), ["style 1 image other.png", "painting.png"]),
])
def test_resume_refuses_other_settings_or_inputs(files, tiny_weights, interrupted, capsys, change, words):
    capsys.readouterr()
    flag, value = change
    steps = () if flag == "--steps" else ("--steps", 40)
    value = files["other"] if value == "OTHER" else value
    assert cli.main(_args(files, tiny_weights, interrupted, *steps, "--resume", flag, value)) == 2
    err = capsys.readouterr().err
    assert _one_line_error(err) and "belongs to another run" in err, err
    for word in words:
        assert word in err
    assert interrupted.with_name("out.checkpoint.npz").exists()  # kept for the right command
    assert not interrupted.exists()


def test_resume_refuses_other_weights(files, huge_weights, interrupted, capsys):
    capsys.readouterr()
    assert cli.main(_args(files, huge_weights, interrupted, "--steps", 40, "--resume")) == 2
    err = capsys.readouterr().err
    assert _one_line_error(err) and "the weights differ" in err, err


def test_a_left_checkpoint_needs_resume_or_overwrite(files, tiny_weights, interrupted, capsys):
    capsys.readouterr()
    argv = _args(files, tiny_weights, interrupted, "--steps", 40)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert _one_line_error(err) and "--resume" in err and "--overwrite" in err, err
    assert cli.main(argv + ["--overwrite"]) == 0  # starts afresh, and the old checkpoint goes
    assert sorted(p.name for p in interrupted.parent.iterdir()) == ["out.interrupted.png", "out.png"]


def test_a_damaged_checkpoint_is_refused(files, tiny_weights, interrupted, capsys):
    ckpt = interrupted.with_name("out.checkpoint.npz")
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    capsys.readouterr()
    assert cli.main(_args(files, tiny_weights, interrupted, "--steps", 40, "--resume")) == 2
    err = capsys.readouterr().err
    assert _one_line_error(err) and "cannot read checkpoint" in err and "out.checkpoint.npz" in err, err


def test_checkpoint_shapes_are_checked(files, tiny_weights, tmp_path):
    """A checkpoint whose arrays do not fit the run (here: another content size) is refused."""
    config = StylizeConfig(size=SIZE, steps=40)
    run = checkpoint.run_record(config, [("content", files["content"])], "0" * 64)
    image = np.full((*OUT_HW, 3), 0.5, np.float32)
    state = optimize.Checkpoint(0, 10, image, optimize.init_state("adam", image, 0.02), None)
    path = tmp_path / "c.npz"
    checkpoint.save(path, state, run, np.ones(10))
    checkpoint.load(path, run, config, (30, 40, 3))  # fits
    with pytest.raises(UsageError, match=r"image float32 \(24, 32, 3\), expected finite float32 \(32, 32, 3\)"):
        checkpoint.load(path, run, config, (40, 40, 3))
    checkpoint.save(path, state, run, np.ones(9))
    with pytest.raises(UsageError, match="9 losses in the history for 10 steps"):
        checkpoint.load(path, run, config, (30, 40, 3))
    with np.load(path) as z:  # drop one optimiser leaf
        arrays = {k: z[k] for k in z.files if k != "state/8"}
    np.savez(path, **arrays)
    with pytest.raises(UsageError, match="8 state arrays, expected 9"):
        checkpoint.load(path, run, config, (30, 40, 3))


# ----------------------------------------------------------------------------
# Refused before any compute


def test_a_size_beyond_memory_is_refused_before_compute(files, tiny_weights, tmp_path, capsys):
    start = time.perf_counter()
    assert cli.main(_args(files, tiny_weights, tmp_path / "out.png", "--size", 100_000)) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert _one_line_error(err), err
    assert "--size 100000 needs about" in err and "GiB" in err and "--remat" in err and "use --size" in err
    assert list(tmp_path.iterdir()) == []


def test_memory_estimate_counts_the_activations_and_advises_a_size_that_fits():
    blocks, widths = vgg.ARCHITECTURES["tiny"]  # widths 4, 6, 8, ...
    # 32x32: conv1_1, relu1_1, conv1_2, relu1_2 (4 channels), pool1 (16x16), conv2_1, relu2_1 (6 channels at 16x16).
    assert memory.activation_elements(blocks, widths, (32, 32), "relu2_1") == 4 * 4 * 1024 + 4 * 256 + 2 * 6 * 256
    vgg19 = vgg.ARCHITECTURES["vgg19"]
    config = StylizeConfig(size=384)
    # Measured (scripts/measure_memory.py): 1066 MiB (Adam) and 1205 MiB (L-BFGS) at 384x255 on XLA:CPU.
    adam = memory.peak_bytes(config, (300, 451, 3), *vgg19) / 2**20
    lbfgs = memory.peak_bytes(config.replace(optimizer="lbfgs"), (300, 451, 3), *vgg19) / 2**20
    assert 1066 <= adam <= 1.3 * 1066 and 1205 <= lbfgs <= 1.3 * 1205
    # With --style-scale 3 the style image's forward pass (600x469 painting at 1152 px) dominates: 2240 MiB.
    style = memory.peak_bytes(config.replace(style_scale=3.0), (300, 451, 3), *vgg19, [(469, 600, 3)]) / 2**20
    assert 2240 <= style <= 1.3 * 2240
    available = 3 * 2**30
    with pytest.raises(UsageError, match=r"use --size (\d+) or less") as info:
        memory.check_memory(config.replace(size=4000), (300, 451, 3), *vgg19, available=available)
    fits = int(info.value.args[0].split("use --size ")[1].split()[0])
    assert memory.peak_bytes(config.replace(size=fits), (300, 451, 3), *vgg19) <= available
    assert memory.peak_bytes(config.replace(size=fits + 1), (300, 451, 3), *vgg19) > available
    memory.check_memory(config.replace(size=fits), (300, 451, 3), *vgg19, available=available)
    # The advice names the larger size that fits with --remat, whose estimate is below the plain one.
    remat_fits = int(info.value.args[0].split("with --remat, --size ")[1].split()[0])
    assert remat_fits > fits
    assert memory.peak_bytes(config.replace(size=remat_fits, remat=True), (300, 451, 3), *vgg19) <= available


def test_the_remat_memory_estimate_covers_measured_runs():
    vgg19 = vgg.ARCHITECTURES["vgg19"]
    # Measured (scripts/measure_memory.py --remat, peak RSS MiB): the estimate is above each, and at
    # large sizes the strips keep it far below the plain run's estimate.
    for size, measured in ((384, 765), (1024, 1087), (2048, 1921)):
        config = StylizeConfig(size=size, remat=True)
        estimate = memory.peak_bytes(config, (300, 451, 3), *vgg19, [(469, 600, 3)]) / 2**20
        assert measured <= estimate <= 2 * measured, size
        if size >= 1024:  # at 384 px one strip covers most of the image
            assert estimate < 0.6 * memory.peak_bytes(config.replace(remat=False), (300, 451, 3), *vgg19) / 2**20


def test_device_out_of_memory_is_one_line_with_exit_code_1(files, tiny_weights, tmp_path, capsys, monkeypatch):
    """A GPU's own out-of-memory error (simulated: this machine has none) becomes one line, exit code 1."""
    def out_of_memory(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                                         "123456789 bytes.\nBufferAssignment OOM Debugging.")

    monkeypatch.setattr(optimize, "stylize", out_of_memory)
    assert cli.main(_args(files, tiny_weights, tmp_path / "out.png", "--steps", 1)) == 1
    err = capsys.readouterr().err
    assert _one_line_error(err), err
    assert "out of memory" in err and "123456789 bytes" in err and "--size" in err and "--remat" in err


def _refusals():
    """(id, extra argv or argv builder, exit code, words): expected failures the CLI must report in one line."""
    return [
        ("style blend count", ("--style-blend", "1,2"), 2, ["style_blend", "2 weights", "1 style image was"]),
        ("negative content weight", ("--content-weight", -1), 2, ["content_weight", "-1"]),
        ("zero steps", ("--steps", 0), 2, ["steps", "0"]),
        ("unknown layer", ("--style-layers", "relu1_1,fc7"), 2, ["fc7"]),
        ("negative checkpoint-every", ("--checkpoint-every", -1), 2, ["checkpoint-every", "-1"]),
        ("resume without checkpoint", ("--resume",), 2, ["--resume", "out.checkpoint.npz"]),
        ("init not an image", ("--init", "TEXT"), 2, ["notes.png"]),
        ("mask not an image", ("--content-mask", "TEXT", "--style-mask", "MASK"), 2, ["notes.png"]),
        ("mask without its pair", ("--content-mask", "MASK"), 2, ["1 --content-mask", "0 --style-mask"]),
        ("weights corrupt", ("--weights", "TEXT"), 1, ["notes.png", "weights"]),
        ("weights a directory", ("--weights", "DIR"), 1, ["directory"]),
    ]


@pytest.mark.parametrize("extra, code, words", [c[1:] for c in _refusals()], ids=[c[0] for c in _refusals()])
def test_expected_failures_are_one_line(files, tiny_weights, tmp_path, capsys, extra, code, words):
    names = {"TEXT": str(files["text"]), "MASK": str(files["mask"]), "DIR": str(files["content"].parent)}
    argv = _args(files, tiny_weights, tmp_path / "out.png", "--steps", 1, *(names.get(str(x), x) for x in extra))
    assert cli.main(argv) == code
    captured = capsys.readouterr()
    assert _one_line_error(captured.err) and captured.out == "", captured.err
    for word in words:
        assert word in captured.err
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback_of_an_expected_error(files, tiny_weights, tmp_path):
    argv = _args(files, tiny_weights, tmp_path / "out.png", "--size", 100_000)
    with pytest.raises(UsageError, match="GiB"):
        cli.main(["--debug", *argv])
    proc = subprocess.run([str(JAXSTYLE), *argv, "--debug"], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 1  # an uncaught exception, as Python reports it
    assert "Traceback (most recent call last)" in proc.stderr and "UsageError: --size 100000" in proc.stderr
    assert "check_memory" in proc.stderr


def test_help_names_the_recovery_files(capsys):
    with pytest.raises(SystemExit):
        cli.main(["stylize", "--help"])
    text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))  # argparse wraps lines, at hyphens too
    for name in ("OUT-stem.checkpoint.npz", "OUT-stem.interrupted.png", "OUT-stem.last-finite.png",
                 "--checkpoint-every", "--resume", "--debug", "130"):
        assert name in text
