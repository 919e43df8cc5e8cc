"""`jaxstyle.video` and ``jaxstyle video``: clips painted without flicker, resumed exactly, refused in one line.

The clips here are crops of a textured image moving by whole pixels, so the
true flow between frames, and where it is defined, are known: the warping
error is measured with it, independently of the optical flow the method used.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import checkpoint, cli, flow, images, optimize, plan, report, temporal, video, video_io
from jaxstyle.config import StylizeConfig, VideoConfig
from synthetic import photo
from tolerance import rounding_atol

SHIFT = (2, 1)  # (dx, dy): the content moves 2 px left and 1 px up per frame
HW = (48, 64)


def moving_clip(n: int = 6) -> list[np.ndarray]:
    """Frames of a camera panning over a textured picture by ``SHIFT`` per frame."""
    big = photo(HW[0] + SHIFT[1] * n, HW[1] + SHIFT[0] * n, seed=4)
    dx, dy = SHIFT
    return [np.ascontiguousarray(big[i * dy:i * dy + HW[0], i * dx:i * dx + HW[1]]) for i in range(n)]


def warping_error(frames: list[np.ndarray]) -> float:
    """Mean over frame pairs of the mean squared difference to the warped predecessor, with the true flow,
    over the pixels whose source lies inside the previous frame."""
    dx, dy = SHIFT
    flow_ = np.broadcast_to(np.array([dx, dy], np.float32), (*HW, 2))
    inside = np.zeros(HW, np.float32)
    inside[:HW[0] - dy, :HW[1] - dx] = 1
    errors = []
    for a, b in zip(frames, frames[1:]):
        warped = np.asarray(temporal.warp(jnp.asarray(a), jnp.asarray(flow_)))
        errors.append(float(np.sum(inside[..., None] * (b - warped) ** 2) / (3 * inside.sum())))
    return float(np.mean(errors))


CONFIG = StylizeConfig(size=64, steps=30)


@pytest.fixture(scope="module")
def clip():
    frames = moving_clip()
    return frames, flow.clip_flows(frames)


@pytest.fixture(scope="module")
def style():
    return photo(32, 32, seed=9)[::-1].copy()


@pytest.fixture(scope="module")
def painted(clip, style, tiny):
    """The clip painted in each mode (tiny network)."""
    frames, flows = clip
    return {mode: video.stylize_clip(frames, [style], tiny, CONFIG, VideoConfig(mode=mode, window=3), flows=flows)
            for mode in ("independent", "sequential", "multipass")}


def test_the_true_flow_carries_each_frame_onto_the_next(clip):
    frames, (_, backward) = clip
    assert warping_error(frames) < 1e-10  # whole-pixel shifts: the warp is exact
    # DIS finds the shift to within half a pixel on this texture, away from the edges (measured: 0.2 at most).
    np.testing.assert_allclose(backward[:, 4:-4, 4:-4], np.broadcast_to(SHIFT, backward[:, 4:-4, 4:-4].shape),
                               atol=0.5)


def test_sequential_and_multipass_flicker_far_less_than_frames_painted_alone(painted):
    alone, sequential, multipass = (warping_error(painted[m]) for m in ("independent", "sequential", "multipass"))
    # Measured: 2.8e-3 alone, 1.0e-5 sequential, 1.2e-4 multipass; the targets are a third of the error alone.
    assert sequential < alone / 3
    assert multipass < alone / 3
    for frames in painted.values():
        assert len(frames) == 6 and all(f.shape == (*HW, 3) and f.dtype == np.float32 for f in frames)


def test_the_first_frame_of_a_sequential_clip_is_the_frame_painted_alone(painted, clip, style, tiny):
    # Its references all have zero masks: the temporal term adds nothing but another program's rounding.
    content = clip[0][0]
    alone = optimize.stylize(content, style, tiny, CONFIG)
    atol = rounding_atol(lambda init: optimize.stylize(content, style, tiny, CONFIG, init=init), content)
    np.testing.assert_allclose(painted["sequential"][0], alone, rtol=0, atol=atol)
    np.testing.assert_allclose(painted["independent"][0], alone, rtol=0, atol=atol)


def test_each_sequential_frame_starts_from_the_previous_one_warped_and_is_held_to_it(clip, style, tiny):
    """The program of frame 1, run by hand: the driver with the warped frame 0 as start and reference."""
    frames, flows = clip
    state = video.ClipState()
    programs = video.programs(frames[:2], [style], tiny, CONFIG, VideoConfig(temporal_weight=50.0),
                              flows=(flows[0][:1], flows[1][:1]), state=state)
    for program in programs:
        program.run()
    mask = temporal.reliable(jnp.asarray(flows[0][0]), jnp.asarray(flows[1][0]))
    warped = temporal.warp(jnp.asarray(state.done[0]), jnp.asarray(flows[1][0]))
    references = temporal.References(warped[None], mask[None])
    start = np.where(np.asarray(mask)[..., None] > 0, np.asarray(warped), frames[1])  # the content where untrusted
    assert 0 < np.mean(mask) < 1  # both kinds of pixel are there

    def by_hand(start):
        return optimize.run([frames[1]], [style], tiny, [CONFIG], init=[start], temporal=[references],
                            temporal_weight=50.0)[0]

    np.testing.assert_allclose(state.done[1], by_hand(start), rtol=0, atol=rounding_atol(by_hand, start))


def test_long_term_masks_hold_each_pixel_to_the_nearest_frame_that_shows_it():
    masks = jnp.array([[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]], [[1.0, 1.0, 1.0]]])  # (3 frames back, 1, 3)
    np.testing.assert_array_equal(temporal.long_term_masks(masks),
                                  [[[1, 0, 0]], [[0, 1, 0]], [[0, 0, 1]]])


def test_chained_flows_carry_a_frame_back_over_several_frames():
    """Two steps of a uniform shift compose to the sum of the shifts; the mask keeps the pixels that stay inside."""
    one = jnp.broadcast_to(jnp.array([1.0, 2.0]), (10, 12, 2))
    ones = jnp.ones((10, 12))
    flows, masks = temporal.chain([one, one], [ones, ones.at[:, -1].set(0.0)])
    np.testing.assert_allclose(flows[1], np.broadcast_to([2.0, 4.0], (10, 12, 2)), atol=1e-6)
    # The second step starts at x + 1: the column before the last lands on the untrusted last column (and
    # the last column beyond the frame, whose edge is repeated).
    np.testing.assert_array_equal(np.asarray(masks[1])[0], [1] * 10 + [0, 0])
    np.testing.assert_array_equal(masks[0], ones)


def test_multipass_blends_each_frame_with_its_warped_neighbour():
    image, neighbour = jnp.zeros((4, 5, 3)), jnp.ones((4, 5, 3))
    mask = jnp.ones((4, 5)).at[0].set(0.0)
    out = np.asarray(temporal.blend(image, neighbour, mask, 0.5))
    np.testing.assert_allclose(out[1:], 0.5)
    np.testing.assert_allclose(out[0], 0.0)


def test_multipass_splits_the_steps_between_its_passes():
    configs = plan.pass_configs(StylizeConfig(steps=300), VideoConfig(mode="multipass", passes=4))
    assert [plan.total_steps(c) for c in configs] == [150, 50, 50, 50]
    assert plan.pass_configs(StylizeConfig(steps=300), VideoConfig(mode="sequential")) == [StylizeConfig(steps=300)]


# ----------------------------------------------------------------------------
# The command


@pytest.fixture
def files(tmp_path, style):
    source = tmp_path / "clip.gif"
    video_io.write_clip(source, moving_clip(), 10)
    images.save_image(tmp_path / "style.png", style)
    return source, tmp_path / "style.png"


def _video(files, tiny_weights, out, *extra) -> int:
    source, style = files
    return cli.main(["video", str(source), "--style", str(style), "-o", str(out), "--weights", str(tiny_weights),
                     "--size", "64", "--steps", "20", "--quiet", *map(str, extra)])


@pytest.mark.parametrize("mode", ["sequential", "multipass"])
def test_the_command_writes_every_frame_at_the_source_rate_and_cleans_up(files, tiny_weights, tmp_path, mode):
    out = tmp_path / "out.mp4"
    assert _video(files, tiny_weights, out, "--mode", mode, "--window", 4) == 0
    clip = video_io.read_clip(out)
    assert len(clip.frames) == 6 and clip.frames[0].shape == (*HW, 3) and clip.fps == 10
    assert not (tmp_path / "out.mp4.unfinished").exists()


# (mode, the checkpoint after which the run is interrupted): 20 steps per frame or per pass, checkpoints every 10.
@pytest.mark.parametrize("mode, interrupt_after", [("sequential", 3), ("multipass", 2)])
def test_an_interrupted_clip_resumes_to_the_frames_of_an_uninterrupted_run(files, tiny_weights, tmp_path,
                                                                          monkeypatch, mode, interrupt_after):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    options = ("--mode", mode, "--window", 4, "--passes", 2, "--checkpoint-every", 10,
               *(("--steps", 40) if mode == "multipass" else ()))
    assert _video(files, tiny_weights, whole, *options) == 0
    with monkeypatch.context() as m:
        save, calls = checkpoint.save, []

        def save_then_interrupt(*args, **kwargs):
            save(*args, **kwargs)
            calls.append(1)
            if len(calls) == interrupt_after:
                raise report.Interrupted(2)

        m.setattr(checkpoint, "save", save_then_interrupt)
        assert _video(files, tiny_weights, cut, *options) == 130
    unfinished = tmp_path / "cut.unfinished"
    assert not cut.exists() and (unfinished / "checkpoint.npz").is_file() and (unfinished / "flows.npz").is_file()
    kept = sorted(p.name for p in unfinished.glob("frame*.npy"))
    if mode == "sequential":  # one checkpoint per frame, at step 10: stopped in frame 3
        assert kept == ["frame00001.npy", "frame00002.npy"]
    else:  # one per pass: stopped in the first window's second pass, its first kept
        assert kept == [] and (unfinished / "window.npz").is_file()
    monkeypatch.setattr(flow, "clip_flows", lambda *a, **k: pytest.fail("the cached flows were computed again"))
    assert _video(files, tiny_weights, cut, *options, "--resume") == 0
    a, b = video_io.read_clip(whole).frames, video_io.read_clip(cut).frames
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not unfinished.exists()


def test_an_unfinished_run_must_be_resumed_or_overwritten_and_only_with_its_own_settings(files, tiny_weights,
                                                                                          tmp_path, capsys):
    out = tmp_path / "out.gif"
    unfinished = tmp_path / "out.gif.unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"settings": {}, "inputs": {}, "weights_sha256": "x"}))
    assert _video(files, tiny_weights, out) == 2
    assert "holds an unfinished run" in capsys.readouterr().err
    assert _video(files, tiny_weights, out, "--resume") == 2
    err = capsys.readouterr().err
    assert "is another run" in err and "--steps" in err and len(err.strip().splitlines()) == 1
    assert _video(files, tiny_weights, tmp_path / "new.gif", "--resume") == 2
    assert "no unfinished run" in capsys.readouterr().err


def _mixed(tmp_path):
    d = tmp_path / "mixed"
    images.save_image(d / "a.png", photo(20, 30))
    images.save_image(d / "b.png", photo(21, 30))
    return d


@pytest.mark.parametrize("make, extra, words", [
    (lambda t: t / "missing.mp4", (), "does not exist"),
    (lambda t: (t / "bad.mp4").write_bytes(b"not a video") and t / "bad.mp4", (), "cannot read video"),
    (lambda t: (t / "empty").mkdir() or t / "empty", (), "holds no image files"),
    (_mixed, (), "give frames of one size"),
    (None, ("--end", 3, "--frames", 2), "not both"),
    (None, ("--start", 10), "has no frames from 10"),
    (None, ("--save-every", 5), "does not apply to a video"),
    (None, ("--shard-image",), "does not apply to a video"),
    (None, ("--fps", 0), "--fps must be positive"),
    (None, ("--window", 0), "--window must be at least 1"),
])
def test_bad_clips_and_options_are_refused_in_one_line_and_nothing_is_written(files, tiny_weights, tmp_path,
                                                                              capsys, make, extra, words):
    source = files[0] if make is None else make(tmp_path)
    out = tmp_path / "out.mp4"
    assert _video((source, files[1]), tiny_weights, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and err.startswith("jaxstyle: error:")
    assert not out.exists() and not (tmp_path / "out.mp4.unfinished").exists()


@pytest.mark.parametrize("output, words", [("out.webm", "cannot write a clip"), ("frames", "folder of the input")])
def test_outputs_the_encoder_lacks_or_over_the_input_are_refused(files, tiny_weights, tmp_path, capsys, output, words):
    frames = tmp_path / "frames"
    video_io.write_clip(frames, moving_clip(3), 10)
    before = sorted(p.read_bytes() for p in frames.iterdir())
    assert _video((frames, files[1]), tiny_weights, tmp_path / output, "--overwrite") == 2
    assert words in capsys.readouterr().err
    assert sorted(p.read_bytes() for p in frames.iterdir()) == before


# ----------------------------------------------------------------------------
# On GPU and TPU


@pytest.mark.parametrize("layout", ["single", "batch"])
def test_the_chunk_of_video_frames_and_the_warps_lower_for_gpu_and_tpu(tiny, layout):
    """A window's program (two frames, each with two references) and the sequential references export."""
    import jax

    from jaxstyle import sharding, step

    frames = [jnp.asarray(f) for f in moving_clip(2)]
    config = StylizeConfig(size=64)
    targets = step.compute_targets(tiny.model, tiny.params, frames[0], (frames[1],), jnp.ones(1),
                                   content_layers=config.content_layers, style_layers=config.style_layers)
    two = lambda tree: jax.tree.map(lambda x: jnp.stack([x, x]), tree)  # noqa: E731
    references = temporal.References(jnp.stack(frames), jnp.ones((2, *HW)))
    targets = targets.replace(temporal=two(references))
    weights = two(step.loss_weights(config, targets).replace(temporal=jnp.float32(200.0)))
    args = (tiny.params, two(frames[0]), two(step.init_state("adam", frames[0], 0.02)), None, targets, weights,
            jnp.int32(3))

    def run(*args):
        return getattr(sharding, layout)().run(tiny.model, *args, optimizer="adam", ema_decay=0.0,
                                               axes=sharding.ItemAxes(None, None))

    exported = jax.export.export(jax.jit(run), platforms=("cuda", "tpu"))(*args)
    assert exported.platforms == ("cuda", "tpu") and exported.out_avals[0].shape == (2, *HW, 3)
    flows = jnp.zeros((2, *HW, 2))
    carried = jax.export.export(video._carried, platforms=("cuda", "tpu"))(
        jnp.stack(frames), flows, jnp.ones((2, *HW)), frames[0], gaps=(1, 2))
    assert carried.out_avals[0].shape == (2, *HW, 3)
