"""`jaxstyle.temporal`: warping by a flow, the reliable-flow mask, and the temporal loss, on flows known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from jaxstyle import temporal

H, W = 24, 40


def _texture(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (h, w, 3)).astype(np.float32)


def _flow(dx, dy, h: int = H, w: int = W) -> np.ndarray:
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0], flow[..., 1] = dx, dy
    return flow


@pytest.mark.parametrize("dx, dy", [(3, 0), (0, -2), (-5, 4)])
def test_warping_by_a_whole_pixel_translation_is_the_shifted_image_inside_the_frame(dx, dy):
    image = _texture()
    out = np.asarray(temporal.warp(image, _flow(dx, dy)))
    # out[y, x] = image[y + dy, x + dx], wherever that lies inside the frame: exact (the weights are 0 and 1).
    ys, xs = slice(max(0, -dy), H - max(0, dy)), slice(max(0, -dx), W - max(0, dx))
    expected = image[max(0, dy):H + min(0, dy), max(0, dx):W + min(0, dx)]
    np.testing.assert_array_equal(out[ys, xs], expected)
    # Outside, the nearest edge pixel is repeated.
    if dx > 0:
        np.testing.assert_array_equal(out[ys, W - 1], image[max(0, dy):H + min(0, dy), W - 1])


def test_warping_by_a_fraction_of_a_pixel_interpolates_a_ramp_exactly():
    ramp = np.tile(np.arange(W, dtype=np.float32), (H, 1))  # value = x
    out = np.asarray(temporal.warp(ramp, _flow(0.25, 0)))
    np.testing.assert_allclose(out[:, :-1], ramp[:, :-1] + 0.25, rtol=0, atol=1e-5)  # bilinear is exact on a ramp


def _moving_square(step: int = 6, left: int = 10, size: int = 12, top: int = 6):
    """A square moving ``step`` px right over a still background: the true flows of both directions."""
    forward, backward = _flow(0, 0), _flow(0, 0)
    forward[top:top + size, left:left + size, 0] = step  # frame a: the square, moving right
    backward[top:top + size, left + step:left + step + size, 0] = -step  # frame b: where it came from
    return forward, backward


def test_the_mask_marks_the_uncovered_band_and_the_moving_edges_and_trusts_the_rest():
    forward, backward = _moving_square(step=6, left=10, size=12, top=6)
    mask = np.asarray(temporal.reliable(forward, backward))
    assert mask.shape == (H, W) and set(np.unique(mask)) <= {0.0, 1.0}
    # The background the square uncovered (x in [10, 16), its rows) was hidden in frame a.
    assert np.all(mask[6:18, 10:16] == 0)
    # The still background away from the square, and the square's inside, are reliable.
    assert np.all(mask[:, 30:] == 1) and np.all(mask[20:, :] == 1) and np.all(mask[:3, :] == 1)
    assert np.all(mask[8:16, 18:26] == 1)
    # The square's edges in frame b are motion boundaries: its right edge too, where nothing was uncovered.
    assert np.all(mask[8:16, 27] == 0)


def test_a_flow_that_leaves_the_frame_is_not_trusted():
    forward, backward = _flow(0, 0), _flow(-3, 0)  # frame b's content came from 3 px to the left ...
    forward[:] = _flow(3, 0)  # ... consistently
    mask = np.asarray(temporal.reliable(forward, backward))
    assert np.all(mask[:, :3] == 0) and np.all(mask[:, 3:] == 1)


def test_the_temporal_loss_is_zero_for_a_still_clip_and_the_masked_mean_square_otherwise():
    frame = _texture()
    still = temporal.warp(frame, _flow(0, 0))
    assert float(temporal.temporal_loss(frame, still, np.ones((H, W), np.float32))) == 0.0
    other = _texture(seed=1)
    mask = np.zeros((H, W), np.float32)
    mask[:, :W // 2] = 1
    expected = ((frame - other)[:, :W // 2] ** 2).sum() / frame.size
    np.testing.assert_allclose(float(temporal.temporal_loss(frame, other, mask)), expected, rtol=1e-6)


def test_the_temporal_term_and_its_gradient_lower_for_gpu_and_tpu():
    import jax

    def term(image, previous, forward, backward):
        return temporal.temporal_loss(image, temporal.warp(previous, backward), temporal.reliable(forward, backward))

    args = (_texture(), _texture(seed=1), _flow(1.5, 0), _flow(-1.5, 0))
    exported = jax.export.export(jax.jit(jax.value_and_grad(term)), platforms=("cuda", "tpu"))(*args)
    assert exported.platforms == ("cuda", "tpu")
    # On this CPU the gradient is the masked difference, 2 m (x - w) / (h w c).
    value, grad = jax.jit(jax.value_and_grad(term))(*args)
    warped, mask = temporal.warp(args[1], args[3]), temporal.reliable(args[2], args[3])
    np.testing.assert_allclose(grad, 2 * np.asarray(mask)[..., None] * (args[0] - warped) / args[0].size,
                               rtol=1e-5, atol=1e-9)
