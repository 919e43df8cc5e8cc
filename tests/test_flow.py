"""`jaxstyle.flow`: OpenCV's DIS flow on frames moved by known amounts, both directions, and its cache."""

from __future__ import annotations

import numpy as np
import pytest

from jaxstyle import flow, images, temporal
from jaxstyle.commands import DEMO_CONTENT

BORDER = 16  # pixels near the edges see content that left or entered the frame


def _photo() -> np.ndarray:
    return images.load_image(DEMO_CONTENT)  # 300 x 451, a textured photo


def _shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``image`` with its content moved by (dx, dy), edges repeated."""
    h, w = image.shape[:2]
    ys = np.clip(np.arange(h) - dy, 0, h - 1)
    xs = np.clip(np.arange(w) - dx, 0, w - 1)
    return image[ys][:, xs]


@pytest.mark.parametrize("dx, dy", [(3, 0), (-2, 4)])
def test_dis_finds_a_known_translation_within_a_tenth_of_a_pixel(dx, dy):
    a = _photo()
    b = _shifted(a, dx, dy)
    found = flow.optical_flow(a, b)[BORDER:-BORDER, BORDER:-BORDER]
    error = np.hypot(found[..., 0] - dx, found[..., 1] - dy)
    # Measured with OpenCV 5.0: mean end-point error 0.023 and 0.004 px, mean flow within 0.004 px.
    assert np.median(error) < 0.1 and abs(found[..., 0].mean() - dx) < 0.1 and abs(found[..., 1].mean() - dy) < 0.1


def test_a_clips_flows_go_both_ways_and_warp_each_frame_onto_the_next():
    a = _photo()
    frames = [a, _shifted(a, 2, 0), _shifted(a, 4, 1)]
    forward, backward = flow.clip_flows(frames)
    assert forward.shape == backward.shape == (2, *a.shape[:2], 2) and forward.dtype == np.float32
    inside = np.s_[BORDER:-BORDER, BORDER:-BORDER]
    np.testing.assert_allclose(np.median(forward[1][inside], axis=(0, 1)), [2, 1], atol=0.1)
    np.testing.assert_allclose(np.median(backward[1][inside], axis=(0, 1)), [-2, -1], atol=0.1)
    # Frame 1 carried along flow(2 -> 1) looks like frame 2 where the flow is reliable.
    carried = np.asarray(temporal.warp(frames[1], backward[1]))
    mask = np.asarray(temporal.reliable(forward[1], backward[1])).astype(bool)
    assert mask[inside].mean() > 0.9
    assert np.abs(carried - frames[2])[mask].mean() < 0.01  # against 0.05 between the frames unwarped
    assert np.abs(frames[1] - frames[2])[mask].mean() > 0.03
    single = flow.clip_flows(frames[:1])
    assert single[0].shape == single[1].shape == (0, *a.shape[:2], 2)


def test_the_flows_are_cached_for_these_frames_only(tmp_path, monkeypatch):
    a = _photo()[:96, :128]
    frames = [a, _shifted(a, 1, 0)]
    path = tmp_path / "out.mp4.flow.npz"
    first = flow.cached_clip_flows(path, frames)
    calls = []
    monkeypatch.setattr(flow, "clip_flows", lambda *args: calls.append(args) or first)
    again = flow.cached_clip_flows(path, frames)
    assert calls == [] and all(np.array_equal(x, y) for x, y in zip(first, again))  # read back, not computed
    flow.cached_clip_flows(path, [a, _shifted(a, 2, 0)])  # other frames: computed again
    assert len(calls) == 1
    path.write_bytes(b"not a cache")  # damaged: computed again and replaced
    flow.cached_clip_flows(path, frames)
    assert len(calls) == 2
    with np.load(path, allow_pickle=False) as saved:
        assert str(saved["fingerprint"]) == flow.fingerprint(frames, "fine")
