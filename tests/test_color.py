"""Colour preservation (Gatys et al. 2017): the colour maths against float64 NumPy, then runs.

The two modes of ``preserve_colors`` each make a claim, measured here:

- ``luminance``: the output keeps the content's chrominance exactly: its I and
  Q channels (YIQ) equal the content's wherever the final RGB clip did not act.
- ``histogram``: the style image is recoloured to the content's colour mean and
  covariance before the transfer, so the output's colours stay closer to the
  content's than without it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import photo as _photo
import scipy.linalg

from jaxstyle import color, optimize, step
from jaxstyle.config import StylizeConfig

# NTSC 1953 RGB -> YIQ, written out again here (not imported) as the reference.
YIQ = np.array([[0.299, 0.587, 0.114],
                [0.595716, -0.274453, -0.321263],
                [0.211456, -0.522591, 0.311135]])
ATOL = 1e-6  # float32 pixel arithmetic against float64, pixels in [0, 1]


def _red_painting(h=30, w=40, seed=2):
    """A strongly red painting (mean RGB about 0.75, 0.21, 0.17) whose colour covariance has full rank."""
    y, x = np.mgrid[0:h, 0:w]
    p = np.stack([0.5 + 0.45 * np.sin(0.9 * x + 0.4 * y), 0.5 + 0.45 * np.cos(0.7 * y),
                  0.1 + 0.8 * ((x // 5) % 2)], -1) + np.random.default_rng(seed).normal(0, 0.03, (h, w, 3))
    return np.clip(np.stack([0.55 + 0.4 * p[..., 0], 0.05 + 0.3 * p[..., 1], 0.05 + 0.25 * p[..., 2]], -1),
                   0, 1).astype(np.float32)


def _stats(image):
    """Colour mean (3,) and covariance (3, 3) of an image's pixels, float64, 1/N normalisation."""
    x = np.asarray(image, np.float64).reshape(-1, 3)
    return x.mean(0), np.cov(x.T, bias=True)


def test_yiq_matches_the_ntsc_matrix_and_round_trips():
    rgb = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(color.rgb_to_yiq(rgb), rgb.astype(np.float64) @ YIQ.T, rtol=0, atol=ATOL)
    np.testing.assert_allclose(color.yiq_to_rgb(color.rgb_to_yiq(rgb)), rgb, rtol=0, atol=ATOL)
    np.testing.assert_allclose(color.luminance(rgb), rgb.astype(np.float64) @ YIQ[0], rtol=0, atol=ATOL)
    # Hand-computed: grey has no chrominance; pure red is (0.299, 0.595716, 0.211456).
    np.testing.assert_allclose(color.rgb_to_yiq(jnp.full((1, 1, 3), 0.4)), [[[0.4, 0, 0]]], rtol=0, atol=ATOL)
    np.testing.assert_allclose(color.rgb_to_yiq(jnp.array([[[1.0, 0, 0]]])), [[YIQ[:, 0]]], rtol=0, atol=ATOL)
    y = color.luminance(rgb)
    np.testing.assert_array_equal(color.gray(y), np.repeat(np.asarray(y)[..., None], 3, -1))


def test_combine_luminance_takes_y_from_the_output_and_iq_from_the_content():
    rng = np.random.default_rng(1)
    output, content = rng.random((2, 16, 12, 3)).astype(np.float32)
    for fn in (color.combine_luminance, jax.jit(color.combine_luminance)):
        got = np.asarray(fn(output, content), np.float64)
        # NumPy reference: swap in the output's Y, back to RGB, clip.
        yiq = content.astype(np.float64) @ YIQ.T
        yiq[..., 0] = output.astype(np.float64) @ YIQ[0]
        np.testing.assert_allclose(got, np.clip(yiq @ np.linalg.inv(YIQ).T, 0, 1), rtol=0, atol=ATOL)
        # Where the clip did not act, Y is the output's and I, Q are the content's exactly.
        kept = np.all((got > 0) & (got < 1), -1)
        assert kept.mean() > 0.5  # random colours: the comparison covers most pixels
        np.testing.assert_allclose((got @ YIQ.T)[kept], yiq[kept], rtol=0, atol=ATOL)


def test_match_luminance_gives_the_content_mean_and_std():
    rng = np.random.default_rng(2)
    style_y = 0.3 + 0.1 * rng.random((20, 20))  # narrow range: no clipping after matching
    content_y = 0.5 + 0.2 * (rng.random((16, 24)) - 0.5)
    got = np.asarray(color.match_luminance(jnp.asarray(style_y, jnp.float32), jnp.asarray(content_y, jnp.float32)))
    reference = (style_y - style_y.mean()) * content_y.std() / style_y.std() + content_y.mean()
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose([got.mean(), got.std()], [content_y.mean(), content_y.std()], rtol=0, atol=1e-5)


def test_match_color_histogram_against_numpy_and_its_stated_statistics():
    # A content of another size, its colours squeezed into [0.2, 0.8] so the recoloured style needs no clipping.
    style, content = _red_painting(), 0.2 + 0.6 * _photo(24, 20, seed=3)
    matched = np.asarray(color.match_color_histogram(jnp.asarray(style), jnp.asarray(content)))
    assert matched.shape == style.shape

    # float64 reference with scipy's matrix square root (the same 1e-5 ridge as the library).
    mean_s, cov_s = _stats(style)
    mean_c, cov_c = _stats(content)
    eye = 1e-5 * np.eye(3)
    transform = np.real(scipy.linalg.sqrtm(cov_c + eye)) @ np.linalg.inv(np.real(scipy.linalg.sqrtm(cov_s + eye)))
    reference = np.clip((style.reshape(-1, 3) - mean_s) @ transform.T + mean_c, 0, 1).reshape(style.shape)
    np.testing.assert_allclose(matched, reference, rtol=0, atol=1e-5)

    # The claim: the recoloured style has the content's colour mean and covariance.
    assert np.all((matched > 0) & (matched < 1))  # no clipping here, so the claim holds exactly
    mean_m, cov_m = _stats(matched)
    np.testing.assert_allclose(mean_m, mean_c, rtol=0, atol=1e-5)
    # Covariance entries are about 0.03; the 1e-5 ridge and float32 leave ~1e-4.
    np.testing.assert_allclose(cov_m, cov_c, rtol=0, atol=2e-4)
    # ... and no longer the style's: the red cast is gone.
    assert np.abs(mean_s - mean_c).max() > 0.25



CFG = StylizeConfig(size=32, steps=100)  # 40x30 inputs give 32x24 outputs


@pytest.fixture(scope="module")
def runs(tiny):
    """The same transfer with each ``preserve_colors`` mode, and the content at the output size."""
    content, style = _photo(), _red_painting()
    out = {mode: optimize.stylize(content, style, tiny, CFG.replace(preserve_colors=mode))
           for mode in ("none", "luminance", "histogram")}
    return out, np.asarray(step.resize(content, (24, 32)), np.float64)


def test_luminance_mode_keeps_the_content_chrominance_exactly(runs):
    out, content = runs
    result = out["luminance"].astype(np.float64)
    kept = np.all((result > 0) & (result < 1), -1)  # pixels the final RGB clip left alone
    assert kept.mean() > 0.8  # measured: 94.5% of the pixels
    iq_out, iq_content = (result @ YIQ.T)[..., 1:], (content @ YIQ.T)[..., 1:]
    np.testing.assert_allclose(iq_out[kept], iq_content[kept], rtol=0, atol=1e-5)  # measured max 1.0e-7
    # The style did act, on the luminance: Y moved from the content's (measured mean |dY| 0.043).
    assert np.abs((result - content) @ YIQ[0]).mean() > 0.02
    # Without the option the style's red reaches the chrominance (measured mean |dIQ| 0.11).
    assert np.abs((out["none"] @ YIQ.T)[..., 1:] - iq_content).mean() > 0.05


def test_luminance_mode_optimises_gray_images_with_matched_luminance():
    content, style = jnp.asarray(_photo()), jnp.asarray(_red_painting())
    gray_content, (gray_style,) = color.prepare("luminance", content, [style])
    for image in (gray_content, gray_style):
        np.testing.assert_array_equal(image[..., 0], image[..., 1])
        np.testing.assert_array_equal(image[..., 0], image[..., 2])
    y = np.asarray(color.luminance(content), np.float64)
    np.testing.assert_allclose([gray_style[..., 0].mean(), gray_style[..., 0].std()], [y.mean(), y.std()],
                               rtol=0, atol=1e-3)  # equal up to clipping at 0 and 1


def test_histogram_mode_recolours_the_style_and_keeps_the_output_colours_closer(runs):
    content, style = jnp.asarray(_photo()), jnp.asarray(_red_painting())
    _, (matched,) = color.prepare("histogram", content, [style])
    mean_m, cov_m = _stats(matched)
    mean_c, cov_c = _stats(content)
    assert np.all((np.asarray(matched) > 0) & (np.asarray(matched) < 1))  # nothing clipped: exact
    np.testing.assert_allclose(mean_m, mean_c, rtol=0, atol=1e-5)  # measured 1.2e-7
    np.testing.assert_allclose(cov_m, cov_c, rtol=0, atol=2e-4)  # measured 8.7e-5 (the 1e-5 ridge)

    # The output's mean chrominance (I, Q) against the content's: measured 0.030 with
    # histogram matching against 0.136 without (100 steps, tiny network).
    out, content64 = runs

    def chroma_distance(image):
        return np.linalg.norm(((np.asarray(image, np.float64) - content64) @ YIQ.T)[..., 1:].mean((0, 1)))

    assert chroma_distance(out["histogram"]) < 0.5 * chroma_distance(out["none"])
    # Per pixel too (measured mean |dIQ| 0.069 against 0.108).
    per_pixel = {m: np.abs(((out[m] - content64) @ YIQ.T)[..., 1:]).mean() for m in ("none", "histogram")}
    assert per_pixel["histogram"] < 0.8 * per_pixel["none"]
