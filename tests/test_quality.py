"""The quality controls, each measured doing what it claims.

Coarse-to-fine, iterate averaging, style blends and style scale, the
2-Wasserstein style loss, the network options (average-pooling scale,
replicate padding, bfloat16) and guided (masked) style transfer. Pure
functions are checked against float64 NumPy/SciPy references; options against
runs of the tiny random network at 32 px (the real VGG19 at 64 px once, for
style scale, where a random network has no notion of texture size).
Colour preservation is in test_color.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import photo as _photo
import scipy.linalg

from jaxstyle import cli, images, losses, optimize, plan, step, vgg, weights
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError

RTOL = 1e-5  # float32 against float64 references
DIFFERS = 4 / 255  # an option that claims to change the output moves pixels by more than this, on average

CFG = StylizeConfig(size=32, steps=20)  # 40x30 inputs give 32x24 outputs
OUT_HW = (24, 32)


def _painting(h=30, w=40, seed=2):
    """Style A: coloured diagonal strokes and vertical bands."""
    y, x = np.mgrid[0:h, 0:w]
    im = np.stack([0.5 + 0.45 * np.sin(0.9 * x + 0.4 * y), 0.5 + 0.45 * np.cos(0.7 * y),
                   0.1 + 0.8 * ((x // 5) % 2)], -1)
    return np.clip(im + np.random.default_rng(seed).normal(0, 0.03, im.shape), 0, 1).astype(np.float32)


def _bands(h=24, w=24, seed=3):
    """Style B: red/blue horizontal bands over a dark green, nothing like style A."""
    y = np.mgrid[0:h, 0:w][0]
    band = (y % 6 < 3).astype(np.float64)
    noise = np.random.default_rng(seed).random((h, w))
    return np.stack([0.2 + 0.6 * band, 0.1 + 0.05 * noise, 0.9 - 0.6 * band], -1).astype(np.float32)


def _psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def _tv(image):
    return float(losses.total_variation(jnp.asarray(image, jnp.float32)))



@pytest.fixture(scope="module")
def base(tiny):
    """The run at `CFG` with style A: what each option is compared with."""
    return optimize.stylize(_photo(), _painting(), tiny, CFG)


# ----------------------------------------------------------------------------
# 1. Coarse to fine


@pytest.mark.parametrize("changes, expected", [
    (dict(size=384), (384,)),
    (dict(size=384, multiscale=True), (128, 181, 256, 362, 384)),  # from 128 by sqrt(2), then the size
    (dict(size=512, multiscale=True), (128, 181, 256, 362, 512)),
    (dict(size=1024, multiscale=True), (128, 181, 256, 362, 512, 724, 1024)),
    (dict(size=100, multiscale=True), (100,)),  # already below the first scale
    (dict(size=256, multiscale=True, scales=(200, 64, 128, 64, 256)), (64, 128, 200, 256)),  # sorted, unique
    (dict(size=256, scales=(64, 128)), (64, 128, 256)),  # scales alone make a run coarse to fine
])
def test_scale_schedule(changes, expected):
    assert plan.scale_sizes(StylizeConfig(**changes)) == expected


def test_multiscale_run_ends_at_the_size_carries_adam_and_differs(tiny, base):
    reports = []
    out = optimize.stylize(_photo(), _painting(), tiny, CFG.replace(scales=(24,), scale_steps=(20, 20)),
                           callback=reports.append)
    assert out.shape == (*OUT_HW, 3)
    assert [(r.step, r.images.shape[1:3]) for r in reports] == [(10, (18, 24)), (20, (18, 24)),
                                                                 (30, OUT_HW), (40, OUT_HW)]
    assert reports[-1].steps == 40
    # Adam's state crossed the scale: its step count kept going (40, not 20), and the
    # moments were resized to the new image rather than started again from zero.
    adam = reports[-1].checkpoint.states.inner_state[0]
    assert int(adam.count[0]) == 40
    assert adam.mu.shape == (1, *OUT_HW, 3) and adam.nu.shape == (1, *OUT_HW, 3)
    coarse = reports[1].checkpoint.states.inner_state[0]
    assert int(coarse.count[0]) == 20 and float(jnp.abs(coarse.mu).mean()) > 0
    assert np.abs(out - base).mean() > DIFFERS  # measured 0.13


def test_with_remat_above_the_coarse_scales_run_whole_and_the_result_is_the_same(tiny, monkeypatch):
    seen, original = [], step.configured

    def spy(model, config, size=None):
        seen.append((size, original(model, config, size).remat))
        return original(model, config, size)

    monkeypatch.setattr(step, "configured", spy)
    config = CFG.replace(scales=(24,), scale_steps=(10, 10), remat=True, remat_above=24)
    out = optimize.stylize(_photo(), _painting(), tiny, config)
    assert [s for s in seen if s[0] is not None] == [(24, False), (32, True)]
    # Strips compute the same objective (tests/test_cli.py: the same picture within 2 levels).
    whole = optimize.stylize(_photo(), _painting(), tiny, config.replace(remat=False, remat_above=0))
    np.testing.assert_allclose(out, whole, atol=2 / 255)


def test_scales_too_small_for_the_network_are_refused_before_compute(tiny):
    # relu5_1 comes after four poolings: it needs 16 pixels on each side. Before the
    # check, a 16x12 scale gave empty activations and a NaN loss ("lower --lr").
    with pytest.raises(UsageError, match=r"at size 16 the output is 16x12 pixels, too small for layer relu5_1"):
        optimize.stylize(_photo(), _painting(), tiny, CFG.replace(multiscale=True, scales=(16,)))
    with pytest.raises(UsageError, match=r"style image 1 is 16x12 pixels.*raise `style_scale`"):
        optimize.stylize(_photo(), _painting(), tiny, CFG.replace(style_scale=0.5))
    # Shallower layers need less: the same 16x12 output is fine for relu3_1 (two poolings).
    out = optimize.stylize(_photo(), _painting(), tiny, CFG.replace(size=16, steps=1, content_layers=("relu3_1",),
                                                                     style_layers=("relu1_1", "relu3_1")))
    assert out.shape == (12, 16, 3)


# ----------------------------------------------------------------------------
# 2. Averaging the iterates


@pytest.fixture(scope="module")
def averaged_run(tiny):
    """A run with ``ema_decay``, reporting every step: (output, iterates, reported images, decay)."""
    decay, iterates, reported = 0.8, [], []

    def record(p):
        iterates.append(np.asarray(p.checkpoint.images[0], np.float64))  # the optimiser's own iterate
        reported.append(np.asarray(p.images[0], np.float64))

    out = optimize.stylize(_photo(), _painting(), tiny, CFG.replace(steps=12, ema_decay=decay),
                           report_every=1, callback=record)
    return out, iterates, reported, decay


def test_output_is_the_debiased_moving_average_of_the_iterates(averaged_run):
    out, iterates, reported, decay = averaged_run
    assert len(iterates) == 12
    ema = np.zeros_like(iterates[0])
    for t, x in enumerate(iterates, 1):
        ema = decay * ema + (1 - decay) * x
        np.testing.assert_allclose(reported[t - 1], ema / (1 - decay ** t), rtol=0, atol=1e-5)
    np.testing.assert_allclose(out, np.clip(ema / (1 - decay ** 12), 0, 1), rtol=0, atol=1e-5)  # measured 1.6e-7
    assert np.abs(out - iterates[-1]).mean() > 1e-3  # not just the last iterate (measured 0.015)


def test_average_is_smoother_than_the_iterates_it_averages(averaged_run):
    # Total variation is convex, so the average's TV is at most the same weighted
    # average of the iterates' TVs; averaging cancels the iterates' differences.
    # (Against the last iterate alone it is not a rule: on the tiny network the average
    # lags the iterates, and later in a run their TV falls while the average's lags.)
    out, iterates, _, decay = averaged_run
    w = (1 - decay) * decay ** np.arange(len(iterates) - 1, -1, -1)
    w /= w.sum()
    iterates_tv = float(np.dot(w, [_tv(x) for x in iterates]))
    assert _tv(out) < 0.98 * iterates_tv  # measured 0.0270 against 0.0287 (ratio 0.94)


# ----------------------------------------------------------------------------
# 3. Several styles and style scale


@pytest.fixture(scope="module")
def blends(tiny):
    styles = [_painting(), _bands()]
    run = lambda blend: optimize.stylize(_photo(), styles, tiny, CFG.replace(style_blend=blend))  # noqa: E731
    return {blend: run(blend) for blend in [(1.0, 0.0), (0.5, 0.5), (0.7, 0.3), (7.0, 3.0)]}


def test_blend_one_zero_equals_the_first_style_alone(blends, base):
    np.testing.assert_allclose(blends[(1.0, 0.0)], base, rtol=0, atol=1e-6)  # measured: identical


def test_even_blend_differs_from_each_style_and_weights_are_normalised(tiny, blends, base):
    only_b = optimize.stylize(_photo(), _bands(), tiny, CFG)
    for single in (base, only_b):
        assert np.abs(blends[(0.5, 0.5)] - single).mean() > DIFFERS  # measured 0.078 and 0.106
    np.testing.assert_allclose(blends[(7.0, 3.0)], blends[(0.7, 0.3)], rtol=0, atol=1e-6)


def test_blended_target_is_the_weighted_gram_matrix(tiny):
    content, styles = jnp.asarray(_photo(24, 32)), (jnp.asarray(_painting(32, 32)), jnp.asarray(_bands(32, 32)))
    layers = ("relu1_1", "relu3_1")
    targets = step.compute_targets(tiny.model, tiny.params, content, styles, jnp.array([0.7, 0.3]),
                                       content_layers=("relu4_2",), style_layers=layers)
    assert len(targets.style) == 1 and targets.masks == (None,)
    for n in layers:
        f = [np.asarray(tiny.features(s, layers)[n], np.float64) for s in styles]
        f = [x.reshape(-1, x.shape[-1]) for x in f]
        expected = sum(w * x.T @ x / len(x) for w, x in zip((0.7, 0.3), f))
        np.testing.assert_allclose(targets.style[0][n], expected, rtol=RTOL, atol=1e-6 * np.abs(expected).max())


def _stripes(size, period):
    """A red/green checker of sinusoids: one spatial frequency, sqrt(2)/period cycles per pixel."""
    y, x = np.mgrid[0:size, 0:size]
    v = 0.5 + 0.45 * np.sin(2 * np.pi * x / period) * np.sin(2 * np.pi * y / period)
    return np.stack([v, 1 - v, np.full_like(v, 0.5)], -1).astype(np.float32)


def _power_spectrum(image):
    """Radial frequency (cycles/pixel) of each 2-D FFT bin and its power, summed over channels, mean removed."""
    x = np.asarray(image, np.float64)
    power = (np.abs(np.fft.fft2(x - x.mean((0, 1)), axes=(0, 1))) ** 2).sum(-1)
    h, w = x.shape[:2]
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    return radius, power


def test_larger_style_scale_gives_a_lower_texture_frequency(real_weights):
    # Measurement: synthesise texture only (content weight 0, from a flat grey with a
    # little noise) with the real VGG19 at 64 px, from a style of one known frequency.
    # style_scale 1 keeps the style's 8-pixel period, style_scale 2 doubles it. The
    # dominant frequency (peak of the power spectrum) should follow, and the power
    # spectrum's centroid (mean frequency, weighted by power) should fall.
    params, meta = real_weights
    net = optimize.Network(weights.model_for(meta), params)
    start = np.clip(0.5 + 0.1 * np.random.default_rng(0).standard_normal((64, 64, 3)), 0, 1).astype(np.float32)
    style = _stripes(64, 8)
    cfg = StylizeConfig(size=64, steps=60, lr=0.05, content_weight=0.0)
    peak, centroid = {}, {}
    for scale in (1.0, 2.0):
        radius, power = _power_spectrum(optimize.stylize(start, style, net, cfg.replace(style_scale=scale)))
        peak[scale] = radius.flat[np.argmax(power)]
        centroid[scale] = float((power * radius).sum() / power.sum())
    # Style frequency sqrt(2)/8 = 0.177 at scale 1, 0.088 at scale 2.
    # Measured: peaks 0.178 and 0.080, centroids 0.192 and 0.114.
    assert abs(peak[1.0] - np.sqrt(2) / 8) < 0.03
    assert peak[2.0] < 0.6 * peak[1.0]
    assert centroid[2.0] < 0.75 * centroid[1.0]


# ----------------------------------------------------------------------------
# 5. The 2-Wasserstein style loss (mean and covariance)


def _random_psd(rng, n, rank=None):
    a = rng.standard_normal((n, rank or n))
    return a @ a.T / n + (0 if rank else 0.1 * np.eye(n))


def _np_sqrtm_psd(a):
    vals, vecs = np.linalg.eigh(np.asarray(a, np.float64))
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def test_sqrtm_psd_against_scipy_on_spd_matrices():
    rng = np.random.default_rng(0)
    for n in (1, 3, 8):
        a = _random_psd(rng, n)
        expected = np.real(scipy.linalg.sqrtm(a))
        got = losses.sqrtm_psd(jnp.asarray(a, jnp.float32))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(jax.jit(losses.sqrtm_psd)(jnp.asarray(a, jnp.float32)), got, rtol=1e-6, atol=1e-6)
        with jax.enable_x64(True):
            np.testing.assert_allclose(losses.sqrtm_psd(jnp.asarray(a, jnp.float64)), expected, rtol=1e-10, atol=1e-12)
    # vmap over a batch equals a loop.
    batch = np.stack([_random_psd(rng, 4) for _ in range(3)]).astype(np.float32)
    np.testing.assert_allclose(jax.vmap(losses.sqrtm_psd)(batch), [losses.sqrtm_psd(b) for b in batch],
                               rtol=1e-6, atol=1e-6)


def test_sqrtm_psd_on_rank_deficient_matrices():
    rng = np.random.default_rng(1)
    for n, rank in ((5, 2), (6, 1), (4, 0)):
        a = _random_psd(rng, n, rank) if rank else np.zeros((n, n))
        with jax.enable_x64(True):
            root = np.asarray(losses.sqrtm_psd(jnp.asarray(a, jnp.float64)))
        np.testing.assert_allclose(root, _np_sqrtm_psd(a), rtol=0, atol=1e-7)
        np.testing.assert_allclose(root @ root, a, rtol=0, atol=1e-12)
        assert np.linalg.matrix_rank(root, tol=1e-6) == rank
        # float32: eigenvalues that round below zero are clipped, so the root stays real.
        root32 = np.asarray(losses.sqrtm_psd(jnp.asarray(a, jnp.float32)))
        assert np.all(np.isfinite(root32))
        np.testing.assert_allclose(root32, _np_sqrtm_psd(a), rtol=0, atol=2e-3)  # sqrt of ~1e-7 eigenvalue noise


def test_sqrtm_psd_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    matrices = {"random": _random_psd(rng, 4),
                # A repeated eigenvalue: differentiating through eigh's eigenvectors fails here.
                "repeated eigenvalue": q @ np.diag([1.0, 1.0, 2.0, 3.0]) @ q.T}
    weights_ = rng.standard_normal((4, 4))
    with jax.enable_x64(True):
        f = lambda a: jnp.sum(jnp.asarray(weights_) * losses.sqrtm_psd(a))  # noqa: E731
        for name, a in matrices.items():
            grad = np.asarray(jax.grad(f)(jnp.asarray(a)))
            assert np.all(np.isfinite(grad)), name
            for _ in range(3):
                e = rng.standard_normal((4, 4))
                e = (e + e.T) / 2  # symmetric directions: the function is defined on symmetric matrices
                eps = 1e-6
                fd = (f(jnp.asarray(a + eps * e)) - f(jnp.asarray(a - eps * e))) / (2 * eps)
                # rtol 1e-5, not 1e-9: the derivative's denominators sqrt(l_i) + sqrt(l_j) carry
                # a floor of 1e-6 sqrt(l_max), a relative change of about 1e-6 (measured 1.4e-6).
                np.testing.assert_allclose(np.sum(grad * e), fd, rtol=1e-5, atol=1e-9, err_msg=name)
                _, jvp = jax.jvp(f, (jnp.asarray(a),), (jnp.asarray(e),))
                np.testing.assert_allclose(jvp, fd, rtol=1e-5, atol=1e-9, err_msg=name)
        # At a singular matrix the derivative is unbounded in theory; the floor keeps it finite.
        singular = jnp.asarray(_random_psd(rng, 4, 2))
        assert np.all(np.isfinite(np.asarray(jax.grad(f)(singular))))
    # The same in float32, as the style loss uses it.
    grad32 = jax.grad(lambda a: jnp.sum(jnp.asarray(weights_, jnp.float32) * losses.sqrtm_psd(a)))(
        jnp.asarray(matrices["random"], jnp.float32))
    with jax.enable_x64(True):
        grad64 = jax.grad(f)(jnp.asarray(matrices["random"]))
    np.testing.assert_allclose(grad32, grad64, rtol=0, atol=1e-4 * np.abs(grad64).max())


def _np_w2(mu1, cov1, mu2, cov2):
    r"""Squared W2 between Gaussians, float64, per channel: the textbook formula."""
    root2 = np.real(scipy.linalg.sqrtm(cov2))
    cross = np.real(scipy.linalg.sqrtm(root2 @ cov1 @ root2))
    return (np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(cross)) / len(mu1)


def test_wasserstein2_distance_against_numpy_and_special_cases():
    rng = np.random.default_rng(3)
    c = 6
    mu1, mu2 = rng.standard_normal(c), rng.standard_normal(c)
    cov1, cov2 = _random_psd(rng, c), _random_psd(rng, c)

    def w2(m1, s1, m2, s2):
        f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return float(losses.wasserstein2_distance((f32(m1), f32(s1)), (f32(m2), f32(s2), losses.sqrtm_psd(f32(s2)))))

    expected = _np_w2(mu1, cov1, mu2, cov2)
    np.testing.assert_allclose(w2(mu1, cov1, mu2, cov2), expected, rtol=1e-4)
    np.testing.assert_allclose(w2(mu2, cov2, mu1, cov1), expected, rtol=1e-4)  # a distance: symmetric
    scale = (np.trace(cov1) + np.sum(mu1 ** 2)) / c
    # Identical Gaussians: zero (up to float32 in the square roots).
    assert abs(w2(mu1, cov1, mu1, cov1)) < 1e-5 * scale
    # Equal covariances: only the means differ, W2^2 = |mu1 - mu2|^2 (divided by c here).
    np.testing.assert_allclose(w2(mu1, cov1, mu2, cov1), np.sum((mu1 - mu2) ** 2) / c, rtol=1e-4)
    # Rank-deficient covariances are fine too.
    low1, low2 = _random_psd(rng, c, 2), _random_psd(rng, c, 3)
    np.testing.assert_allclose(w2(mu1, low1, mu2, low2), _np_w2(mu1, low1, mu2, low2), rtol=1e-3)
    with jax.enable_x64(True):
        got = losses.wasserstein2_distance((jnp.asarray(mu1), jnp.asarray(cov1)),
                                           (jnp.asarray(mu2), jnp.asarray(cov2), losses.sqrtm_psd(jnp.asarray(cov2))))
        np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_mean_covariance_against_numpy_with_and_without_mask():
    rng = np.random.default_rng(4)
    f = rng.standard_normal((6, 5, 7)).astype(np.float32) + 0.5
    x = f.reshape(-1, 7).astype(np.float64)
    mean, cov = losses.mean_covariance(jnp.asarray(f))
    np.testing.assert_allclose(mean, x.mean(0), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(cov, np.cov(x.T, bias=True), rtol=RTOL, atol=1e-6)

    m = rng.random((6, 5))
    w = m.reshape(-1, 1)
    mean_w = (w * x).sum(0) / w.sum()
    cov_w = ((x - mean_w) * w).T @ (x - mean_w) / w.sum()
    mean, cov = jax.jit(losses.mean_covariance)(jnp.asarray(f), jnp.asarray(m, jnp.float32))
    np.testing.assert_allclose(mean, mean_w, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(cov, cov_w, rtol=RTOL, atol=1e-6)

    binary = np.zeros((6, 5))
    binary[1:4, 2:] = 1  # a 0/1 mask: the statistics of the selected positions only
    mean, cov = losses.mean_covariance(jnp.asarray(f), jnp.asarray(binary, jnp.float32))
    inside = f[1:4, 2:].reshape(-1, 7).astype(np.float64)
    np.testing.assert_allclose(mean, inside.mean(0), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(cov, np.cov(inside.T, bias=True), rtol=RTOL, atol=1e-6)


def test_mean_cov_run_lowers_the_w2_distance_to_the_style(tiny):
    cfg = CFG.replace(steps=60, style_loss="mean_cov")
    out = optimize.stylize(_photo(), _painting(), tiny, cfg)
    style = jnp.asarray(step.resize(_painting(), plan.output_shape((30, 40), 32)))
    layers = cfg.style_layers
    target = {n: losses.style_target(losses.mean_covariance(f), "mean_cov")
              for n, f in tiny.features(style, layers).items()}

    def w2(image):
        feats = tiny.features(jnp.asarray(image), layers)
        return {n: float(losses.wasserstein2_distance(losses.mean_covariance(feats[n]), target[n])) for n in layers}

    before, after = w2(step.resize(_photo(), OUT_HW)), w2(out)  # the run starts from the content
    for n in layers:  # measured ratios 0.24, 0.03, 0.04, 0.13, 0.10
        assert after[n] < 0.5 * before[n], (n, before[n], after[n])


# ----------------------------------------------------------------------------
# 6. Network options


def test_avg_pool_scale_multiplies_the_average_pooled_activations(tiny):
    image = jnp.asarray(_photo(24, 32))
    plain = step.configured(tiny.model, CFG.replace(pooling="avg", avg_pool_scale=1.0))
    scaled = step.configured(tiny.model, CFG.replace(pooling="avg", avg_pool_scale=2.5))
    a = plain.apply({"params": tiny.params}, image, ("relu1_2", "pool1"))
    b = scaled.apply({"params": tiny.params}, image, ("relu1_2", "pool1"))
    np.testing.assert_allclose(b["pool1"], 2.5 * np.asarray(a["pool1"]), rtol=1e-6, atol=0)
    # Against NumPy: the mean of each 2x2 block of relu1_2 (the last activation before pool1), times the scale.
    r = np.asarray(a["relu1_2"], np.float64)
    blocks = r.reshape(12, 2, 16, 2, -1).mean((1, 3))
    np.testing.assert_allclose(b["pool1"], 2.5 * blocks, rtol=RTOL, atol=1e-5 * np.abs(blocks).max())


def test_replicate_padding_changes_only_the_border_of_conv1_1(tiny):
    image = jnp.asarray(_photo(24, 32))
    zeros = step.configured(tiny.model, CFG).apply({"params": tiny.params}, image, ("conv1_1",))["conv1_1"]
    edge = step.configured(tiny.model, CFG.replace(padding="replicate")).apply(
        {"params": tiny.params}, image, ("conv1_1",))["conv1_1"]
    zeros, edge = np.asarray(zeros), np.asarray(edge)
    scale = np.abs(zeros).max()  # caffe inputs are in 0-255 units: activations of order 100
    np.testing.assert_allclose(edge[1:-1, 1:-1], zeros[1:-1, 1:-1], rtol=0, atol=1e-5 * scale)
    border = np.ones((24, 32), bool)
    border[1:-1, 1:-1] = False
    assert np.all(np.abs(edge - zeros).max(-1)[border] > 1e-3 * scale)

    # Against NumPy: a 3x3 correlation of the edge-padded caffe input.
    x = np.pad(np.asarray(vgg.preprocess(image, "caffe"), np.float64), ((1, 1), (1, 1), (0, 0)), mode="edge")
    k = np.asarray(tiny.params["conv1_1"]["kernel"], np.float64)
    expected = sum(x[i:i + 24, j:j + 32] @ k[i, j] for i in range(3) for j in range(3))
    np.testing.assert_allclose(edge, expected + np.asarray(tiny.params["conv1_1"]["bias"]), rtol=0, atol=1e-4 * scale)


def test_bfloat16_output_is_close_to_float32(tiny):
    # From noise, where the run changes the image a lot; from the content the loss is
    # flat near the start, and bf16's rounding of tiny gradients steers Adam's sign-like
    # first steps as much as a 1/255 change of the start image does (both about 20 dB).
    cfg = CFG.replace(init="noise", lr=0.01)
    f32 = optimize.stylize(_photo(), _painting(), tiny, cfg)
    bf16 = optimize.stylize(_photo(), _painting(), tiny, cfg.replace(dtype="bfloat16"))
    start = np.asarray(step.initial_image("noise", jnp.zeros((*OUT_HW, 3)), cfg.seed))
    assert _psnr(bf16, f32) > 25  # measured 33.5 dB
    assert _psnr(bf16, f32) > _psnr(f32, start) + 5  # the run itself moved the image: 24.5 dB


# ----------------------------------------------------------------------------
# 7. Guided style transfer (masks)


def test_guided_gram_matrix_against_numpy():
    rng = np.random.default_rng(5)
    f = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)
    m = rng.random((2, 6, 5)).astype(np.float32)

    def reference(f, m):
        x, w = f.reshape(-1, 4).astype(np.float64), m.reshape(-1, 1).astype(np.float64)
        return x.T @ (w * x) / w.sum()

    for fn in (losses.gram_matrix, jax.jit(losses.gram_matrix)):
        np.testing.assert_allclose(fn(f[0], m[0]), reference(f[0], m[0]), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(losses.gram_matrix)(f, m), [reference(a, b) for a, b in zip(f, m)],
                               rtol=RTOL, atol=1e-6)
    # A 0/1 mask gives the Gram matrix of the selected positions; all ones, the plain one.
    binary = np.zeros((6, 5), np.float32)
    binary[2:, :3] = 1
    np.testing.assert_allclose(losses.gram_matrix(f[0], binary), losses.gram_matrix(f[0][2:, :3]), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(losses.gram_matrix(f[0], np.ones((6, 5), np.float32)), losses.gram_matrix(f[0]),
                               rtol=RTOL, atol=1e-6)
    # Hand-computed: one-hot features in the masked region only.
    one_hot = np.zeros((2, 2, 3), np.float32)
    one_hot[0, 0, 1] = 2.0
    np.testing.assert_allclose(losses.gram_matrix(one_hot, np.array([[1, 0], [0, 0]], np.float32)),
                               np.diag([0.0, 4.0, 0.0]), rtol=0, atol=1e-6)


def test_masked_run_moves_each_region_toward_its_own_style(tiny):
    left = np.zeros((30, 40), np.float32)
    left[:, :20] = 1  # style A on the left half of the output, style B on the right
    whole = lambda s: np.ones(s.shape[:2], np.float32)  # noqa: E731
    styles = [_painting(24, 24), _bands()]
    out = optimize.stylize(_photo(), styles, tiny, CFG.replace(steps=60),
                           masks=[(left, whole(styles[0])), (1 - left, whole(styles[1]))])
    layers = CFG.style_layers
    targets = [{n: losses.gram_matrix(f) for n, f in tiny.features(jnp.asarray(step.resize(s, (32, 32))),
                                                                     layers).items()} for s in styles]

    def distances(image, side):
        """Per-layer relative Gram distance of one half of ``image`` to styles A and B."""
        feats = tiny.features(jnp.asarray(image), layers)
        result = []
        for target in targets:
            d = []
            for n in layers:
                h, w, _ = feats[n].shape  # widths 32, 16, 8, 4, 2: the halves are whole columns
                mask = np.zeros((h, w), np.float32)
                mask[:, :w // 2] = 1
                mask = mask if side == "left" else 1 - mask
                d.append(float(losses.gram_distance(losses.gram_matrix(feats[n], mask), target[n])
                               / jnp.mean(target[n] ** 2)))
            result.append(np.mean(d))
        return result

    content = step.resize(_photo(), OUT_HW)
    for side, own in (("left", 0), ("right", 1)):
        before, after = distances(content, side), distances(out, side)
        other = 1 - own
        # Measured (mean over layers): left  A 0.58 -> 0.13, B 1.34 -> 1.30;
        #                              right B 0.69 -> 0.07, A 0.71 -> 0.39.
        assert after[own] < 0.4 * before[own], (side, before, after)
        assert after[own] < 0.5 * after[other], (side, before, after)
        assert after[own] / before[own] < after[other] / before[other], (side, before, after)


def _mask_pair(shape=(30, 40)):
    return np.ones(shape, np.float32), np.ones((24, 24), np.float32)


@pytest.mark.parametrize("config, masks, message", [
    (CFG, [_mask_pair()], r"1 mask pairs for 2 style images; give one content mask and one style mask per style image"),
    (CFG, [_mask_pair(), (np.ones((30, 40, 3), np.float32), np.ones((24, 24), np.float32))],
     r"content mask 2 must be a 2-D \(h, w\) array, got shape \(30, 40, 3\)"),
    (CFG, [_mask_pair(), (np.ones((30, 40), np.float32), np.ones((24, 24, 1), np.float32))],
     r"style mask 2 must be a 2-D"),
    (CFG, [(np.pad(np.ones((30, 20), np.float32), ((0, 0), (0, 20))), np.ones((24, 24), np.float32)),
           (np.pad(np.ones((30, 10), np.float32), ((0, 0), (30, 0))), np.ones((24, 24), np.float32))],
     r"the content masks leave part of the image without any style"),
    (CFG.replace(style_blend=(1.0,)), None, r"`style_blend` has 1 weights but 2 style images were given"),
    (CFG.replace(style_blend=(1.0, 2.0, 3.0)), None, r"`style_blend` has 3 weights but 2 style images were given"),
])
def test_bad_masks_and_blends_are_refused_before_compute(tiny, config, masks, message):
    with pytest.raises(UsageError, match=message):
        optimize.stylize(_photo(), [_painting(), _bands()], tiny, config, masks=masks)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("quality_inputs")
    paths = {name: d / f"{name}.png" for name in ("content", "a", "b", "mask")}
    images.save_image(paths["content"], _photo())
    images.save_image(paths["a"], _painting())
    images.save_image(paths["b"], _bands())
    images.save_image(paths["mask"], np.ones((30, 40, 3), np.float32))
    return paths


def _cli(files, tiny_weights, out, *options):
    return cli.main(["stylize", str(files["content"]), "--style", str(files["a"]), str(files["b"]),
                     "-o", str(out), "--weights", str(tiny_weights), "--size", "32", "--steps", "10", "--quiet",
                     *map(str, options)])


def test_cli_blends_two_styles(files, tiny_weights, tmp_path, capsys):
    out = tmp_path / "blend.png"
    assert _cli(files, tiny_weights, out, "--style-blend", "0.7", "0.3") == 0
    assert images.load_image(out).shape == (*OUT_HW, 3)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("options, words", [
    (("--style-blend", "1"), ["--style-blend has 1 weights but 2 style images were given"]),
    (("--content-mask", "MASK", "--style-mask", "MASK"),
     ["got 1 --content-mask and 1 --style-mask for 2 style image(s)"]),
    (("--content-mask", "MASK", "--content-mask", "MASK", "--style-mask", "MASK"),
     ["got 2 --content-mask and 1 --style-mask"]),
])
def test_cli_bad_blend_or_mask_count_is_one_line_exit_2(files, tiny_weights, tmp_path, capsys, options, words):
    out = tmp_path / "out.png"
    options = [str(files["mask"]) if o == "MASK" else o for o in options]
    assert _cli(files, tiny_weights, out, *options) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxstyle: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err
    assert not out.exists()
