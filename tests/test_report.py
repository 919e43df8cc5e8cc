"""`jaxstyle.report`: how every run ends, through the command line.

- A NaN loss stops the run: exit code 1, one line, the last finite image kept.
- Ctrl-C, SIGTERM and SIGHUP (to the console script) keep the current picture
  and a checkpoint, exit code 130, 143 and 129, for `stylize`, `batch` and
  `sweep` alike.
- A checkpoint that cannot be written is a warning, once; an output that
  cannot be written keeps the finished run in its checkpoint.
- The progress bar of a batch counts one total for the whole run.
- ``--resume`` continues from the checkpoint and gives the image an
  uninterrupted run gives, bit for bit (the same compiled programs on the same
  values; XLA:CPU is deterministic), for Adam, L-BFGS, coarse-to-fine and
  iterate averaging. A checkpoint of other settings or inputs is refused.
- Sizes beyond the machine's memory and other bad options are refused before
  any compute, as one line with exit code 2 (``--debug``: the traceback).

All runs use the tiny random network at 32 px (`conftest.tiny_weights`).
"""

from __future__ import annotations

import errno
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

from jaxstyle import checkpoint, cli, images, optimize, report, weights
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import JaxstyleError
from processes import SignalInFinaliser

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
    assert "NaN or Inf" in err and "out.png.last-finite.png" in err and "--lr" in err
    kept = tmp_path / "out.png.last-finite.png"
    assert images.load_image(kept).shape == (*OUT_HW, 3)
    assert images.read_metadata(kept)["step"] == "0"  # the overflow comes at the first step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png.last-finite.png"]  # no OUT, no checkpoint


# ----------------------------------------------------------------------------
# Ctrl-C


def test_sigint_exits_130_and_keeps_the_image_and_a_checkpoint(files, tiny_weights, tmp_path):
    out = tmp_path / "out.png"
    ckpt = tmp_path / "out.png.checkpoint.npz"
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
    assert "interrupted (SIGINT) at step" in stderr and "out.png.interrupted.png" in stderr and "--resume" in stderr
    assert not out.exists()
    interrupted = tmp_path / "out.png.interrupted.png"
    assert images.load_image(interrupted).shape == (*OUT_HW, 3)
    # The checkpoint is that of the interrupted image's step, and fits this run.
    step = int(images.read_metadata(interrupted)["step"])
    config = StylizeConfig(size=SIZE, steps=10**8)
    run = checkpoint.run_record(config, [("the content image", files["content"]), ("style image 1", files["style"])],
                                weights.load(tiny_weights)[1]["params_sha256"], output="out.png")
    state, history = checkpoint.load(ckpt, run, config, (30, 40, 3))
    assert state.step == step >= 10 and state.scale == 0 and history.shape == (1, step)


# ----------------------------------------------------------------------------
# --resume


def _interrupt_after_checkpoints(monkeypatch, n: int, signum: int = signal.SIGINT) -> None:
    """Make the run stop as a signal stops it (`report.Interrupted`) right after its n-th checkpoint."""
    save, calls = checkpoint.save, []

    def save_then_interrupt(*args, **kwargs):
        save(*args, **kwargs)
        calls.append(1)
        if len(calls) == n:
            raise report.Interrupted(signum)

    monkeypatch.setattr(checkpoint, "save", save_then_interrupt)


# (options, the checkpoint after which the run is interrupted): 40 steps per scale, checkpoints every 20.
RESUME_CASES = {
    "adam": ((), 1),
    "lbfgs": (("--optimizer", "lbfgs"), 1),
    "multiscale": (("--scales", 24), 3),  # 40 then 22 steps: interrupted at step 20 of the second scale
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
    ckpt = resumed.with_name("out.tif.checkpoint.npz")
    assert ckpt.exists() and not resumed.exists()
    assert "--resume" in capsys.readouterr().err
    resumed, code = run("resumed", "--resume")
    assert code == 0
    assert not ckpt.exists()  # removed when the run finishes, and so is the interrupted picture
    assert sorted(p.name for p in resumed.parent.iterdir()) == ["out.json", "out.tif"]
    # Bitwise (atol 0) at 16 bits, and so is every logged loss before and after the interruption.
    np.testing.assert_array_equal(images.load_image(resumed), images.load_image(whole))
    log = json.loads(resumed.with_suffix(".json").read_text())
    assert log == json.loads(whole.with_suffix(".json").read_text())
    assert len(log) == (40 + 22 if "--scales" in options else 40)  # 22 = 40 (24 / 32)**2


def test_a_signal_lost_in_a_finaliser_still_ends_the_run_at_the_next_report(files, tiny_weights, tmp_path,
                                                                             monkeypatch, capsys):
    save, out = checkpoint.save, tmp_path / "out.png"

    def save_then_lose_a_signal(*args, **kwargs):
        save(*args, **kwargs)
        SignalInFinaliser()

    monkeypatch.setattr(checkpoint, "save", save_then_lose_a_signal)
    code = cli.main(_args(files, tiny_weights, out, "--steps", 80, "--checkpoint-every", 20))
    err = capsys.readouterr().err
    assert code == 143, err  # not 0: the run did not go on to its end
    step = int(re.search(r"interrupted \(SIGTERM\) at step (\d+)", err).group(1))
    assert 20 < step < 80 and "Traceback" not in err and "Exception ignored" not in err, err
    assert not out.exists() and out.with_name("out.png.checkpoint.npz").exists()
    assert int(images.read_metadata(out.with_name("out.png.interrupted.png"))["step"]) == step  # saved there


@pytest.fixture
def interrupted(files, tiny_weights, tmp_path, monkeypatch) -> pathlib.Path:
    """OUT of a run (40 steps) interrupted after its checkpoint at step 20; OUT does not exist."""
    out = tmp_path / "out.png"
    with monkeypatch.context() as m:
        _interrupt_after_checkpoints(m, 1)
        assert cli.main(_args(files, tiny_weights, out, "--steps", 40, "--checkpoint-every", 20)) == 130
    assert out.with_name("out.png.checkpoint.npz").exists()
    return out


@pytest.mark.parametrize("change, words", [
    (("--lr", 0.03), ["--lr was 0.02, now 0.03"]),
    (("--steps", 50), ["--steps was 40, now 50"]),
    (("--style-layers", "relu1_1,relu2_1"), ["--style-layers was relu1_1,relu2_1,relu3_1,relu4_1,relu5_1"]),
    (("--style", "OTHER"), ["style image 1 image other.png", "painting.png"]),
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
    assert interrupted.with_name("out.png.checkpoint.npz").exists()  # kept for the right command
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
    assert cli.main(argv + ["--overwrite"]) == 0  # starts afresh; the old checkpoint and picture go
    assert sorted(p.name for p in interrupted.parent.iterdir()) == ["out.png"]


def test_a_damaged_checkpoint_is_refused(files, tiny_weights, interrupted, capsys):
    ckpt = interrupted.with_name("out.png.checkpoint.npz")
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    capsys.readouterr()
    assert cli.main(_args(files, tiny_weights, interrupted, "--steps", 40, "--resume")) == 2
    err = capsys.readouterr().err
    assert _one_line_error(err) and "cannot read checkpoint" in err and "out.png.checkpoint.npz" in err, err


# ----------------------------------------------------------------------------
# Refused before any compute


def test_a_size_beyond_memory_is_refused_before_compute(files, tiny_weights, tmp_path, capsys):
    start = time.perf_counter()
    assert cli.main(_args(files, tiny_weights, tmp_path / "out.png", "--size", 100_000)) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert _one_line_error(err), err
    # Not even the smallest strips fit: the planner refuses, naming the largest size that does.
    assert re.search(r"--size 100000 needs about [\d,.]+ GiB of memory and [\d,.]+ GiB is half of what is "
                     r"available; "
                     r"use --size \d+ or less$", err.strip()), err
    assert list(tmp_path.iterdir()) == []


def _loud(argv: list[str]) -> list[str]:
    return [a for a in argv if a != "--quiet"]


def _plan_line(err: str) -> str:
    [line] = [line for line in err.splitlines() if line.startswith("jaxstyle: plan: ")]
    return line.removeprefix("jaxstyle: plan: ")


def test_a_run_says_its_memory_plan_and_max_memory_sends_it_into_strips(files, tiny_weights, tmp_path, capsys):
    from jaxstyle import memory, plan

    assert cli.main(_loud(_args(files, tiny_weights, tmp_path / "a.png", "--steps", 1))) == 0
    default = (r"(4\.0 GiB is a CPU run's default \(--max-memory sets another\)"  # half of what is available is more
               r"|[\d.]+ GiB is half of what is available)")
    assert re.fullmatch(r"32x24, 1 step: whole image, about 0\.8 GiB; " + default + "; the time left shows once "
                        r"the first steps have run", _plan_line(capsys.readouterr().err))
    # At 256 px (256x192) strips of 2**15 pixels are the largest smaller than the whole image.
    params, meta = weights.load(tiny_weights)
    blocks, widths = plan.ARCHITECTURES[meta["architecture"]]
    styles = [images.load_image(files["style"]).shape]
    config = StylizeConfig(size=256, steps=1)
    whole = memory.peak_bytes(config, (30, 40, 3), blocks, widths, styles)
    assert memory.peak_bytes(config.replace(remat=True, strip_pixels=2**16), (30, 40, 3), blocks, widths,
                             styles) == whole
    budget = whole - 1
    argv = _args(files, tiny_weights, tmp_path / "b.png", "--steps", 1, "--size", 256, "--max-memory", budget / 2**30)
    assert cli.main(_loud(argv)) == 0
    assert _plan_line(capsys.readouterr().err).startswith("256x192, 1 step: strips of 128 rows, about 0.8 GiB; 0.8 GiB is "
                                                          "allowed by --max-memory")
    assert images.load_image(tmp_path / "b.png").shape == (192, 256, 3)
    # Below what any run needs: one line that says to raise the limit.
    assert cli.main(_args(files, tiny_weights, tmp_path / "c.png", "--max-memory", 0.5)) == 2
    err = capsys.readouterr().err
    assert _one_line_error(err) and err.strip().endswith("0.5 GiB is allowed by --max-memory; raise --max-memory"), err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("available, cpu_memory, says", [
    (64, 4, "4.0 GiB is a CPU run's default (--max-memory sets another)"),
    (6, 4, "3.0 GiB is half of what is available"),  # less than the default
    (64, 0.25, "32 GiB is half of what is available"),  # the run fits in no strips within the default
])
def test_a_cpu_run_takes_4_gib_unless_it_needs_more_or_half_the_memory_is_less(
        files, tiny_weights, tmp_path, capsys, monkeypatch, available, cpu_memory, says):
    from jaxstyle import memory

    monkeypatch.setattr(memory, "available_memory", lambda: available * 2**30)
    monkeypatch.setattr(memory, "CPU_MEMORY", round(cpu_memory * 2**30))
    assert cli.main(_loud(_args(files, tiny_weights, tmp_path / "a.png", "--steps", 1))) == 0
    assert _plan_line(capsys.readouterr().err).startswith(f"32x24, 1 step: whole image, about 0.8 GiB; {says}; ")


def test_on_a_gpu_the_plan_takes_the_devices_free_memory(files, tiny_weights, tmp_path, capsys, monkeypatch):
    """Simulated (this machine has no GPU): the plan asks the device, not the host."""
    from jaxstyle import runtime

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(runtime, "device_memory", lambda: 5 * 2**30)
    assert cli.main(_loud(_args(files, tiny_weights, tmp_path / "a.png", "--steps", 1))) == 0
    assert _plan_line(capsys.readouterr().err).startswith("32x24, 1 step: whole image, about 0.8 GiB; 5.0 GiB is free "
                                                          "on the device; ")


def test_device_out_of_memory_is_one_line_with_exit_code_1(files, tiny_weights, tmp_path, capsys, monkeypatch):
    """A GPU's own out-of-memory error (simulated: this machine has none) becomes one line, exit code 1."""
    def out_of_memory(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                                         "123456789 bytes.\nBufferAssignment OOM Debugging.")

    monkeypatch.setattr(optimize, "run", out_of_memory)
    assert cli.main(_args(files, tiny_weights, tmp_path / "out.png", "--steps", 1)) == 1
    err = capsys.readouterr().err
    assert _one_line_error(err), err
    assert "out of memory" in err and "123456789 bytes" in err and "--size" in err and "--remat" in err


def _refusals():
    """(id, extra argv or argv builder, exit code, words): expected failures the CLI must report in one line."""
    return [
        ("style blend count", ("--style-blend", "1,2"), 2, ["--style-blend", "2 weights", "1 style image was"]),
        ("negative content weight", ("--content-weight", -1), 2, ["--content-weight", "-1"]),
        ("zero steps", ("--steps", 0), 2, ["steps", "0"]),
        ("unknown layer", ("--style-layers", "relu1_1,fc7"), 2, ["fc7"]),
        ("negative checkpoint-every", ("--checkpoint-every", -1), 2, ["checkpoint-every", "-1"]),
        ("resume without checkpoint", ("--resume",), 2, ["--resume", "out.png.checkpoint.npz"]),
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
    proc = subprocess.run([str(JAXSTYLE), *argv, "--debug"], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 2  # still a usage error
    assert "Traceback (most recent call last)" in proc.stderr and "UsageError: `size` 100000" in proc.stderr
    assert "check_memory" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("jaxstyle: error: --size 100000 needs about")


def test_help_names_the_recovery_files(capsys):
    with pytest.raises(SystemExit):
        cli.main(["stylize", "--help"])
    text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))  # argparse wraps lines, at hyphens too
    for name in ("OUT.checkpoint.npz", "OUT.interrupted.png", "OUT.last-finite.png", "SIGTERM",
                 "--checkpoint-every", "--resume", "--debug", "130"):
        assert name in text


# ----------------------------------------------------------------------------
# Every signal that ends a run saves it first


def _wait_for(path: pathlib.Path, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {path.name} within {seconds} s"
        time.sleep(0.05)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_save_the_run_like_ctrl_c(files, tiny_weights, tmp_path, signum, code):
    """`timeout`, `docker stop`, systemd and SLURM send TERM; a closed terminal HUP: both save first."""
    out = tmp_path / "out.png"
    ckpt, interrupted = tmp_path / "out.png.checkpoint.npz", tmp_path / "out.png.interrupted.png"
    proc = subprocess.Popen([str(JAXSTYLE), *_args(files, tiny_weights, out, "--steps", 10**8, "--checkpoint-every",
                                                   10)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_for(ckpt, proc)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    name = signal.Signals(signum).name
    assert f"interrupted ({name}) at step" in stderr and "--resume" in stderr and stderr.count("\n") == 1, stderr
    step = int(images.read_metadata(interrupted)["step"])
    assert step >= 10 and ckpt.exists() and not out.exists()


@pytest.mark.parametrize("command", ["batch", "sweep"])
def test_sigterm_saves_a_batch_or_a_sweep_and_resume_finishes_it(files, tiny_weights, tmp_path, command):
    folder = tmp_path / "photos"
    for i in range(3):
        images.save_image(folder / f"p{i}.png", _picture(i + 4))
    common = [command, str(folder if command == "batch" else folder / "p0.png"), "--style", str(files["style"]),
              "--weights", str(tiny_weights), "--size", str(SIZE), "--quiet", "--checkpoint-every", "10"]
    if command == "sweep":
        common += ["--style-weight", "1,100", "--tv-weight", "0,2"]
    ckpt = tmp_path / "out" / ("batch.checkpoint.npz" if command == "batch" else "p0__sheet.png.checkpoint.npz")
    proc = subprocess.Popen([str(JAXSTYLE), *common, "-o", str(tmp_path / "out"), "--steps", "200"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_for(ckpt, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert "interrupted (SIGTERM)" in stderr and str(ckpt) in stderr, stderr
    # Continued, it finishes; done in one go, the same files.
    assert cli.main([*common, "-o", str(tmp_path / "out"), "--steps", "200", "--resume"]) in (0,)
    assert not ckpt.exists()
    assert cli.main([*common, "-o", str(tmp_path / "whole"), "--steps", "200"]) == 0
    written = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "out").iterdir() if "interrupted" not in p.name)
    for name in written:
        if "sheet" not in name:
            np.testing.assert_allclose(images.load_image(tmp_path / "out" / name),
                                       images.load_image(tmp_path / "whole" / name), rtol=0, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("command", ["batch", "sweep"])
def test_an_interrupted_batch_or_sweep_resumes_exactly(files, tiny_weights, tmp_path, monkeypatch, capsys, command):
    """In-process: stopped right after its first checkpoint, then --resume: bit for bit the uninterrupted files."""
    folder = tmp_path / "photos"
    for i in range(3):
        images.save_image(folder / f"p{i}.png", _picture(i + 4))
    argv = [command, str(folder if command == "batch" else folder / "p0.png"), "--style", str(files["style"]),
            "--weights", str(tiny_weights), "--size", str(SIZE), "--quiet", "--steps", "40", "--checkpoint-every", "20",
            "--ext", ".tif", "--batch-size", "2", *(("--lr", "0.02,0.05", "--tv-weight", "0,2") if command == "sweep" else ())]
    assert cli.main([*argv, "-o", str(tmp_path / "whole")]) == 0
    with monkeypatch.context() as m:
        _interrupt_after_checkpoints(m, 2)  # in the second program
        assert cli.main([*argv, "-o", str(tmp_path / "out")]) == 130
    assert "continue with --resume" in capsys.readouterr().err
    assert cli.main([*argv, "-o", str(tmp_path / "out"), "--resume"]) == 0
    names = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "out").iterdir()) and len(names) >= 2
    for name in names:
        np.testing.assert_array_equal(images.load_image(tmp_path / "out" / name),
                                      images.load_image(tmp_path / "whole" / name))


def test_two_outputs_never_share_a_checkpoint(files, tiny_weights, tmp_path, monkeypatch, capsys):
    """a.png's unfinished run survives a finished run of a.jpg with --overwrite, and resumes."""
    png, jpg = tmp_path / "a.png", tmp_path / "a.jpg"
    with monkeypatch.context() as m:
        _interrupt_after_checkpoints(m, 1)
        assert cli.main(_args(files, tiny_weights, png, "--steps", 40, "--checkpoint-every", 20)) == 130
    assert cli.main(_args(files, tiny_weights, jpg, "--steps", 2, "--overwrite")) == 0
    assert (tmp_path / "a.png.checkpoint.npz").exists() and (tmp_path / "a.png.interrupted.png").exists()
    assert cli.main(_args(files, tiny_weights, png, "--steps", 40, "--resume")) == 0
    # The finished run removes its checkpoint and its interrupted picture, and nothing of a.jpg's.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a.png"]


def test_a_checkpoint_that_cannot_be_written_is_a_warning_once(files, tiny_weights, tmp_path, monkeypatch, capsys):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", full_disk)
    out = tmp_path / "out.png"
    assert cli.main(_args(files, tiny_weights, out, "--steps", 30, "--checkpoint-every", 5)) == 0
    err = capsys.readouterr().err
    assert err.count("cannot write the checkpoint (No space left on device)") == 1, err
    assert images.load_image(out).shape == (*OUT_HW, 3)


def test_an_output_that_cannot_be_written_keeps_the_finished_run(files, tiny_weights, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.png"
    save = images.save_image

    def no_room_for_the_output(path, *args, **kwargs):
        if pathlib.Path(path) == out:
            raise JaxstyleError(f"cannot write {str(path)!r}: No space left on device")
        return save(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(images, "save_image", no_room_for_the_output)
        assert cli.main(_args(files, tiny_weights, out, "--steps", 20)) == 1
    err = capsys.readouterr().err
    assert _one_line_error(err) and "No space left" in err and "the finished run is kept in" in err, err
    assert (tmp_path / "out.png.checkpoint.npz").exists() and not out.exists()
    assert cli.main(_args(files, tiny_weights, out, "--steps", 20, "--resume")) == 0
    assert cli.main(_args(files, tiny_weights, tmp_path / "whole.png", "--steps", 20)) == 0
    np.testing.assert_array_equal(images.load_image(out), images.load_image(tmp_path / "whole.png"))


def test_the_progress_bar_of_a_batch_counts_one_total(files, tiny_weights, tmp_path, capsys):
    """Two shape groups (landscape and portrait) and two programs: the count only grows, to one total."""
    folder = tmp_path / "photos"
    for i, shape in enumerate([(30, 40), (30, 40), (30, 40), (40, 30)]):
        images.save_image(folder / f"p{i}.png", _picture(i + 1, *shape))
    assert cli.main(["batch", str(folder), "--style", str(files["style"]), "-o", str(tmp_path / "out"),
                     "--weights", str(tiny_weights), "--size", str(SIZE), "--steps", "20",
                     "--batch-size", "2"]) == 0
    counts = [tuple(map(int, m)) for m in re.findall(r"(\d+)/(\d+) \[", capsys.readouterr().err)]
    assert counts and {total for _, total in counts} == {4 * 20}, counts
    done = [n for n, _ in counts]
    assert done == sorted(done) and done[-1] == 80, done


# ----------------------------------------------------------------------------
# Time: measured between reports, over the scales' FLOPs, remembered for the next plan


def test_the_speed_is_measured_within_scales_and_gives_the_time_left():
    speed = report.Speed([(10, 100), (10, 400)], items=2)  # FLOPs per item-step of two scales of 10 steps
    assert speed.done(15) == 2 * (10 * 100 + 5 * 400)
    speed.update(0, 5, 4.0)  # the first report: compilation inside, nothing measured
    assert speed.rate is None and speed.seconds_left(5) is None
    speed.update(0, 10, 5.0)  # 5 steps of 2 x 100 FLOPs in 1 s
    assert speed.rate == 1000
    speed.update(1, 15, 9.0)  # a new scale compiled: not measured
    assert speed.rate == 1000
    speed.update(1, 20, 10.0)  # 5 steps of 2 x 400 in 1 s
    assert speed.rate == (1000 + 4000) / 2
    assert speed.seconds_left(15) == 4000 / 2500 and speed.seconds_left(20) == 0
    assert speed.seconds_left(10, rate=100) == 8000 / 100
    assert [report.duration(s) for s in (29, 75, 5400, 7260)] == ["under a minute", "about 1 min", "about 1 h 30 min",
                                                                         "about 2 h 1 min"]


def test_the_bar_shows_the_scale_and_time_left_and_the_next_plan_knows_the_speed(
        files, tiny_weights, tmp_path, capsys, monkeypatch):
    speeds = tmp_path / "speeds.json"
    monkeypatch.setattr(report, "speeds_path", lambda: speeds)
    argv = _loud(_args(files, tiny_weights, tmp_path / "a.png", "--steps", 20, "--size", 40, "--scales", 28))
    assert cli.main(argv) == 0  # 20 steps at 28 px, then 10 at 40 px
    err = capsys.readouterr().err
    assert _plan_line(err).endswith("; the time left shows once the first steps have run")
    assert "scale=1/2" in err and "scale=2/2" in err and re.search(r"left=0:\d\d", err), err
    # The bar is drawn with the report it counts: the steps of the second scale say so.
    drawn = [line for line in re.split(r"[\r\n]", err) if "30/30" in line]
    assert drawn and all("scale=2/2" in line for line in drawn), drawn
    [(key, rate)] = json.loads(speeds.read_text()).items()
    assert key.startswith("cpu:") and key.endswith(":whole:adam:float32") and rate > 0
    assert cli.main(_loud(_args(files, tiny_weights, tmp_path / "b.png", "--steps", 20))) == 0
    assert _plan_line(capsys.readouterr().err).endswith("; under a minute of steps at the speed of the last such run")


# ----------------------------------------------------------------------------
# The schedule on the command line: steps per scale, continuing a smaller output, 16-bit PNG


def test_scale_steps_set_each_scales_steps_and_the_plan_says_them(files, tiny_weights, tmp_path, capsys):
    log = tmp_path / "a.json"
    argv = _loud(_args(files, tiny_weights, tmp_path / "a.png", "--size", 40, "--scales", 28, "--scale-steps", "6,2",
                       "--log", log))
    assert cli.main(argv) == 0
    assert _plan_line(capsys.readouterr().err).startswith("40x30 in 2 scales (28/40 px, 6/2 steps): whole image")
    assert len(json.loads(log.read_text())) == 8
    assert cli.main(_args(files, tiny_weights, tmp_path / "b.png", "--scales", 28, "--scale-steps", 6)) == 2
    err = capsys.readouterr().err
    assert _one_line_error(err) and "--scale-steps must give one step count per scale (28, 32 px), got 6" in err


def test_a_smaller_finished_output_given_as_init_continues_at_the_next_scale(files, tiny_weights, tmp_path, capsys):
    small = tmp_path / "small.tif"  # 16 bits: the continued run starts from the very pixels the first one ended at
    assert cli.main(_args(files, tiny_weights, small, "--size", 28, "--steps", 6)) == 0
    log = tmp_path / "big.json"
    continued = _loud(_args(files, tiny_weights, tmp_path / "big.png", "--size", 40, "--scales", 28,
                            "--scale-steps", "6,3", "--init", small, "--log", log))
    assert cli.main(continued) == 0
    assert _plan_line(capsys.readouterr().err).startswith("40x30, 3 steps: ")  # the 28 px scale is done already
    assert len(json.loads(log.read_text())) == 3
    # The same as a single-scale run of 3 steps from that picture, which is what continuing means.
    direct = _args(files, tiny_weights, tmp_path / "direct.png", "--size", 40, "--steps", 3, "--init", small)
    assert cli.main(direct) == 0
    np.testing.assert_array_equal(images.load_image(tmp_path / "big.png"), images.load_image(tmp_path / "direct.png"))
    # The record keeps what was asked: the settings, not the shortened schedule.
    settings = json.loads(images.read_metadata(tmp_path / "big.png")["settings"])
    assert settings["scales"] == [28] and settings["scale_steps"] == [6, 3]


def test_png_bits_16_writes_16_bit_pngs(files, tiny_weights, tmp_path):
    out = tmp_path / "deep.png"
    assert cli.main(_args(files, tiny_weights, out, "--steps", 2, "--png-bits", 16, "--save-every", 1)) == 0
    for path in (out, tmp_path / "deep.png.step00001.png"):
        assert path.read_bytes()[24] == 16, path  # IHDR bit depth
    assert cli.main(_args(files, tiny_weights, tmp_path / "x.png", "--png-bits", 12)) == 2


def test_speeds_are_remembered_per_network():
    """The tiny test network runs its FLOPs far slower than VGG19: its speed must not plan a VGG19 run."""
    networks = ("vgg19", "vgg16", "tiny")
    keys = [report.speed_key(StylizeConfig(), a) for a in networks]
    assert len(set(keys)) == 3 and all(f":{a}:" in k for a, k in zip(networks, keys))
