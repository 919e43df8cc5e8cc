"""The losses against float64 NumPy references, finite differences and hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import losses

RTOL = 1e-5  # float32 against float64 references


def np_gram(f):
    h, w, c = f.shape
    f = f.reshape(h * w, c).astype(np.float64)
    return f.T @ f / (h * w)


def np_gram_distance(g, a):
    return np.mean((g - a) ** 2)


def np_content(f, p):
    return np.mean((f.astype(np.float64) - p) ** 2)


def np_tv(x):
    x = x.astype(np.float64)
    return np.mean((x[1:] - x[:-1]) ** 2) + np.mean((x[:, 1:] - x[:, :-1]) ** 2)


# Analytic gradients, derived by hand:
#   d/dF mean((F^T F / M - A)^2) = 4 F (G - A) / (M N^2)      (G, A symmetric)
#   d/dF mean((F - P)^2)         = 2 (F - P) / (M N)
def np_style_grad(f, a):
    h, w, c = f.shape
    f2 = f.reshape(h * w, c).astype(np.float64)
    g = f2.T @ f2 / (h * w)
    return (4 * f2 @ (g - a) / (h * w * c * c)).reshape(h, w, c)


def np_tv_grad(x):
    x = x.astype(np.float64)
    g = np.zeros_like(x)
    dy = x[1:] - x[:-1]
    dx = x[:, 1:] - x[:, :-1]
    ny, nx = dy.size, dx.size
    g[1:] += 2 * dy / ny
    g[:-1] -= 2 * dy / ny
    g[:, 1:] += 2 * dx / nx
    g[:, :-1] -= 2 * dx / nx
    return g


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((7, 5, 4)).astype(np.float32),
            rng.standard_normal((7, 5, 4)).astype(np.float32),
            rng.random((9, 6, 3)).astype(np.float32))


def test_gram_of_one_hot_feature_map():
    # One position of 4 has channel 0 on, another has channels 0 and 2 on:
    # G = (e0 e0^T + (e0+e2)(e0+e2)^T) / 4.
    f = np.zeros((2, 2, 3), np.float32)
    f[0, 0, 0] = 1
    f[1, 1, 0] = f[1, 1, 2] = 1
    expected = np.array([[2, 0, 1], [0, 0, 0], [1, 0, 1]]) / 4
    np.testing.assert_allclose(losses.gram_matrix(f), expected, rtol=0, atol=1e-7)


def test_tv_of_a_step_edge():
    # A vertical edge of height 1 in a 4x4 one-channel image: 4 horizontal
    # differences of 1 among 12, no vertical ones -> TV = 4/12.
    x = np.zeros((4, 4, 1), np.float32)
    x[:, 2:] = 1
    np.testing.assert_allclose(losses.total_variation(x), 4 / 12, rtol=1e-7)


@pytest.mark.parametrize("jit", [False, True])
def test_values_match_numpy(feats, jit):
    f, p, x = feats
    a = np_gram(p)
    maybe = jax.jit if jit else (lambda fn: fn)
    np.testing.assert_allclose(maybe(losses.gram_matrix)(f), np_gram(f), rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(maybe(losses.content_loss)(f, p), np_content(f, p), rtol=RTOL)
    np.testing.assert_allclose(maybe(losses.gram_distance)(losses.gram_matrix(f), a),
                               np_gram_distance(np_gram(f), a), rtol=RTOL)
    np.testing.assert_allclose(maybe(losses.total_variation)(x), np_tv(x), rtol=RTOL)
    style = maybe(losses.style_loss)({"a": f, "b": p}, {"a": a, "b": np_gram(f)}, {"a": 0.3, "b": 2.0})
    expected = 0.3 * np_gram_distance(np_gram(f), a) + 2.0 * np_gram_distance(np_gram(p), np_gram(f))
    np.testing.assert_allclose(style, expected, rtol=RTOL)


@pytest.mark.parametrize("jit", [False, True])
def test_gradients_match_analytic(feats, jit):
    f, p, x = feats
    a = np_gram(p)
    maybe = jax.jit if jit else (lambda fn: fn)
    g_style = maybe(jax.grad(lambda f: losses.gram_distance(losses.gram_matrix(f), a)))(f)
    np.testing.assert_allclose(g_style, np_style_grad(f, a), rtol=1e-4, atol=1e-6)
    g_content = maybe(jax.grad(losses.content_loss))(f, p)
    np.testing.assert_allclose(g_content, 2 * (f.astype(np.float64) - p) / f.size, rtol=RTOL, atol=1e-8)
    np.testing.assert_allclose(maybe(jax.grad(losses.total_variation))(x), np_tv_grad(x), rtol=1e-4, atol=1e-7)


def _objective_args(rng):
    image = rng.random((8, 8, 3))
    feats = {"relu1_1": rng.standard_normal((8, 8, 4)), "relu2_1": rng.standard_normal((4, 4, 6))}
    targets = losses.Targets(content={"relu2_1": rng.standard_normal((4, 4, 6))},
                             style=({"relu1_1": np_gram(rng.standard_normal((8, 8, 4))),
                                     "relu2_1": np_gram(rng.standard_normal((5, 3, 6)))},),
                             masks=(None,))
    weights = losses.Weights(content=1.5, style=0.7, tv=3.0, content_layers={"relu2_1": 1.0},
                             style_layers=({"relu1_1": 0.5, "relu2_1": 2.0},))
    return image, feats, targets, weights


def test_total_loss_gradient_against_finite_differences():
    rng = np.random.default_rng(1)
    image, feats, targets, weights = _objective_args(rng)
    with jax.enable_x64(True):
        def fn(image, feats):
            return losses.total_loss(image, feats, targets, weights)

        grads = jax.grad(fn, argnums=(0, 1))(jnp.asarray(image), jax.tree.map(jnp.asarray, feats))
        eps = 1e-6
        for _ in range(12):  # random coordinates of the image and of each feature map
            which = rng.integers(3)
            arr = image if which == 0 else feats[["relu1_1", "relu2_1"][which - 1]]
            idx = tuple(rng.integers(s) for s in arr.shape)
            plus, minus = arr.copy(), arr.copy()
            plus[idx] += eps
            minus[idx] -= eps
            if which == 0:
                fd = (fn(plus, feats) - fn(minus, feats)) / (2 * eps)
                analytic = grads[0][idx]
            else:
                name = ["relu1_1", "relu2_1"][which - 1]
                fd = (fn(image, {**feats, name: plus}) - fn(image, {**feats, name: minus})) / (2 * eps)
                analytic = grads[1][name][idx]
            np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-9)


def test_total_is_sum_of_terms_against_numpy():
    rng = np.random.default_rng(2)
    image, feats, targets, weights = _objective_args(rng)
    f32 = jax.tree.map(lambda a: np.asarray(a, np.float32), (image, feats))
    total = losses.total_loss(*f32, targets, weights)
    expected = (1.5 * np_content(feats["relu2_1"], targets.content["relu2_1"])
                + 0.7 * (0.5 * np_gram_distance(np_gram(feats["relu1_1"]), targets.style[0]["relu1_1"])
                         + 2.0 * np_gram_distance(np_gram(feats["relu2_1"]), targets.style[0]["relu2_1"]))
                + 3.0 * np_tv(image))
    np.testing.assert_allclose(total, expected, rtol=RTOL)


def test_vmap_equals_loop():
    rng = np.random.default_rng(3)
    batch = rng.standard_normal((5, 6, 7, 4)).astype(np.float32)
    images = rng.random((5, 6, 7, 3)).astype(np.float32)
    a = np_gram(rng.standard_normal((6, 7, 4)))
    np.testing.assert_allclose(jax.vmap(losses.gram_matrix)(batch),
                               np.stack([losses.gram_matrix(f) for f in batch]), rtol=1e-5, atol=1e-6)
    dist = jax.vmap(lambda f: losses.gram_distance(losses.gram_matrix(f), a))(batch)
    np.testing.assert_allclose(dist, [losses.gram_distance(losses.gram_matrix(f), a) for f in batch], rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(losses.total_variation)(images),
                               [losses.total_variation(x) for x in images], rtol=1e-5)
    grads = jax.vmap(jax.grad(losses.total_variation))(images)
    np.testing.assert_allclose(grads, np.stack([np_tv_grad(x) for x in images]), rtol=1e-4, atol=1e-7)


def test_normalizers_make_zero_image_score_one(feats):
    f, p, _ = feats
    targets = {"a": np_gram(f), "b": p}
    norms = losses.normalizers(targets)
    np.testing.assert_allclose(norms["a"] * losses.gram_distance(jnp.zeros((4, 4)), targets["a"]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(norms["b"] * losses.content_loss(jnp.zeros_like(p), p), 1.0, rtol=1e-5)
