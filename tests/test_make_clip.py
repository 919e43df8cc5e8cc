"""scripts/make_clip.py: the synthetic clip's true flow carries each frame to the next where it says
the pixel was visible, not where it was hidden, agrees with DIS, and the command line writes the clip."""

import importlib.util
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxstyle import flow, images, temporal, video_io

ROOT = pathlib.Path(__file__).parent.parent
FRAMES, SIZE = 6, 96


def _load_script():
    spec = importlib.util.spec_from_file_location("make_clip", ROOT / "scripts" / "make_clip.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


make_clip = _load_script()


@pytest.fixture(scope="module")
def clip():
    background = images.load_image(make_clip.BACKGROUND)
    sprite = make_clip.cat_head(images.load_image(make_clip.CHELSEA))
    return make_clip.synthetic_clip(background, sprite, frames=FRAMES, size=SIZE, seed=0)


def _sources(backward):
    """Where each pixel of frame i + 1 comes from in frame i, and whether that is inside frame i."""
    h, w = backward.shape[1:3]
    ys, xs = np.mgrid[0:h, 0:w]
    sx, sy = xs + backward[..., 0], ys + backward[..., 1]
    return (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)


def test_shapes_and_ranges(clip):
    h, w = make_clip.frame_shape(SIZE)
    assert (h, w) == (64, 96)
    assert len(clip.frames) == FRAMES
    for frame in clip.frames:
        assert frame.shape == (h, w, 3) and frame.dtype == np.float32
        assert frame.min() >= 0 and frame.max() <= 1
    assert clip.backward.shape == (FRAMES - 1, h, w, 2) and clip.backward.dtype == np.float32
    assert clip.visible.shape == (FRAMES - 1, h, w) and set(np.unique(clip.visible)) == {0.0, 1.0}
    assert clip.alpha.shape == (FRAMES, h, w)
    # The frames differ (the camera and the object move), and so does the flow across the frame.
    assert min(np.abs(clip.frames[i + 1] - clip.frames[i]).mean() for i in range(FRAMES - 1)) > 0.01
    for i in range(FRAMES - 1):  # the zoom: the background's flow is not one translation
        background = clip.backward[i][clip.alpha[i + 1] == 0]
        assert np.ptp(background, axis=0).max() > 0.03  # measured 0.08-0.25 px across the frame


def test_true_flow_carries_each_frame_to_the_next_where_visible(clip):
    frames = np.stack(clip.frames)
    warped = np.asarray(jax.vmap(temporal.warp)(frames[:-1], clip.backward))
    error = np.abs(warped - frames[1:]).mean(-1)
    # Where the object's coverage carried back is over half, frame i shows the object and frame i + 1
    # the background: the band the object uncovers.
    there = np.asarray(jax.vmap(temporal.warp)(clip.alpha[:-1], clip.backward))
    uncovered = (clip.alpha[1:] == 0) & (there >= 0.5) & _sources(clip.backward)
    for i in range(FRAMES - 1):
        seen, hidden = clip.visible[i] > 0, uncovered[i]
        assert not (seen & hidden).any()
        # On visible pixels only resampling is left: the frames were rendered from the photos with a
        # bicubic filter, and `warp` resamples frame i bilinearly; measured 0.012-0.013 a pair here
        # (0.001 with the photos blurred; 0.06 with the flow's sign flipped).
        assert error[i][seen].mean() < 0.02
        # Where the object was, the warp brings it back over the background: measured 0.22-0.25.
        assert hidden.sum() >= 20
        assert error[i][hidden].mean() > 0.1
        assert error[i][hidden].mean() > 5 * error[i][seen].mean()


def test_visible_mask_has_a_disoccluded_band(clip):
    h, w = clip.visible.shape[1:]
    assert clip.visible.mean() > 0.8  # measured 0.93
    inner = np.zeros((h, w), bool)
    inner[4:-4, 4:-4] = True
    for i in range(FRAMES - 1):
        zeros = (clip.visible[i] == 0) & inner & _sources(clip.backward)[i]
        assert zeros.sum() >= 50  # the uncovered band and the object's rim; measured about 240
        # The zeros lie next to the object: within a few pixels of where it is in frame i + 1 or i.
        near = _dilate((clip.alpha[i + 1] > 0) | (clip.alpha[i] > 0), 3)
        assert near[zeros].all()
    # Pixels entering at the frame's edges (the camera pans) are not visible.
    entering = ~_sources(clip.backward)
    assert entering.any(axis=(1, 2)).all() and (clip.visible[entering] == 0).all()


def test_dis_flow_agrees_with_the_true_flow(clip):
    _, backward = flow.clip_flows(clip.frames)
    endpoint = np.linalg.norm(backward - clip.backward, axis=-1)
    for i in range(FRAMES - 1):
        rim = (clip.alpha[i + 1] > 0) & (clip.alpha[i + 1] < 1)
        away = (clip.visible[i] > 0) & ~_dilate(rim, 4)  # DIS smears motion boundaries over its patches
        # Measured a median of 0.10-0.13 px a pair (90th percentile 0.42-0.48 px).
        assert np.median(endpoint[i][away]) < 0.3


def test_bicubic_is_exact_on_quadratics():
    # Keys' kernel with a = -1/2 reproduces polynomials up to degree two, inside the image.
    ys, xs = np.mgrid[0:12, 0:10].astype(np.float64)
    image = (0.3 * xs ** 2 - 0.2 * xs * ys + 0.1 * ys ** 2 + xs - 2)[..., None]
    rng = np.random.default_rng(0)
    x, y = rng.uniform(1, 8, 50), rng.uniform(1, 10, 50)
    expected = 0.3 * x ** 2 - 0.2 * x * y + 0.1 * y ** 2 + x - 2
    np.testing.assert_allclose(make_clip._bicubic(image, x, y)[..., 0], expected, rtol=0, atol=1e-9)


def test_command_line_writes_a_gif(tmp_path):
    out = tmp_path / "clip.gif"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_clip.py"), str(out),
                           "--frames", "4", "--size", "48", "--fps", "10"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"wrote {out}: 4 frames of 48x32 at 10 fps (seed 0)"
    written = video_io.read_clip(out)
    assert len(written.frames) == 4 and written.frames[0].shape == (32, 48, 3)
    assert written.fps == 10


def test_command_line_refuses_an_existing_output(tmp_path, capsys):
    out = tmp_path / "clip.gif"
    out.write_bytes(b"")
    assert make_clip.main([str(out), "--frames", "2", "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("make_clip: error: ") and "already exists" in err and err.count("\n") == 1


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` (h, w) grown by ``steps`` pixels (4-neighbourhood)."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = (padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1]
                | padded[1:-1, :-2] | padded[1:-1, 2:])
    return mask
