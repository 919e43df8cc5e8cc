"""Tests for the feed-forward image transformation network (`jaxstyle.transform`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxstyle import config, transform
from jaxstyle.errors import UsageError
from tolerance import rounding_atol


def test_instance_norm_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (7, 9, 5)).astype(np.float32)
    scale, bias = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean((0, 1))) / np.sqrt(x64.var((0, 1)) + transform.EPS) * scale + bias
    # float32 of values of order 1: a few ulps.
    np.testing.assert_allclose(transform.instance_norm(x, scale, bias), expected, rtol=0, atol=2e-5)
    np.testing.assert_allclose(jax.jit(transform.instance_norm)(x, scale, bias), expected, rtol=0, atol=2e-5)


def test_instance_norm_of_a_hand_computed_map():
    x = np.array([[[0.0], [2.0]], [[4.0], [6.0]]], np.float32)  # mean 3, variance 5
    out = transform.instance_norm(x, np.float32([2.0]), np.float32([1.0]))
    expected = (x - 3.0) / np.sqrt(5.0 + transform.EPS) * 2.0 + 1.0
    np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("hw", [(32, 48), (17, 23), (5, 7), (1, 1), (33, 8)])
def test_the_network_keeps_any_size_and_paints_in_range(hw):
    params = transform.init_params("tiny", jax.random.key(0))
    image = np.random.default_rng(1).uniform(0, 1, (2, *hw, 3)).astype(np.float32)
    out = np.asarray(transform.apply(transform.model_for("tiny"), params, image))
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
    assert np.abs(out[0] - out[1]).max() > 0 or hw == (1, 1)  # the pictures are painted, not a constant


def test_batched_apply_equals_one_at_a_time_and_jit():
    model, params = transform.model_for("tiny"), transform.init_params("tiny", jax.random.key(2))
    images = np.random.default_rng(2).uniform(0, 1, (3, 20, 28, 3)).astype(np.float32)
    batched = np.asarray(jax.jit(transform.apply, static_argnums=0)(model, params, images))
    for i in range(3):
        alone = np.asarray(model.apply({"params": params}, images[i]))
        np.testing.assert_allclose(batched[i], alone, rtol=0, atol=1e-5)  # float32 sums in another order


def test_presets_and_their_size():
    assert set(transform.ARCHITECTURES) == set(config.TRANSFORM_ARCHITECTURES)
    count = lambda a: sum(int(np.prod(s)) for s in transform.param_shapes(a).values())  # noqa: E731
    assert count("johnson") == 1_679_235  # Johnson et al.'s network, with instance normalisation
    assert 0.2 < count("johnson_half") / count("johnson") < 0.3  # half the width: about a quarter


def test_conditional_instance_norm_mixes_styles_linearly():
    """Two styles in one network: weights (0.3, 0.7) paint as a one-style network whose normalisation
    parameters are 0.3 and 0.7 of the two styles' (Dumoulin et al.)."""
    two = transform.init_params("tiny", jax.random.key(3), styles=2)
    keys = iter(jax.random.split(jax.random.key(4), 1000))
    norm = lambda path: path[0].key.startswith("_Norm")  # noqa: E731 (the normalisations' scale and bias)
    two = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.3 * jax.random.normal(next(keys), x.shape) if norm(path) else x, two)
    w = jnp.array([0.3, 0.7])
    one = jax.tree_util.tree_map_with_path(lambda path, x: (w @ x)[None] if norm(path) else x, two)
    image = np.random.default_rng(5).uniform(0, 1, (1, 24, 24, 3)).astype(np.float32)
    mixed = transform.apply(transform.model_for("tiny", 2), two, image, w)
    alone = transform.apply(transform.model_for("tiny", 1), one, image)
    np.testing.assert_allclose(mixed, alone, rtol=0, atol=1e-5)
    first = transform.apply(transform.model_for("tiny", 2), two, image)  # default: the first style
    assert np.abs(np.asarray(first) - np.asarray(mixed)).max() > 1e-3


def test_a_model_of_an_unknown_network_is_refused_in_one_line():
    assert transform.expected_shapes({"architecture": "tiny", "styles": [{}, {}]}) == \
        transform.param_shapes("tiny", 2)
    with pytest.raises(UsageError, match="architecture 'resnet'.*it knows johnson, johnson_half, tiny") as e:
        transform.expected_shapes({"architecture": "resnet", "styles": [{}]})
    assert "\n" not in str(e.value)


def test_blocked_cpu_convolutions_equal_the_plain_ones(monkeypatch):
    """On a CPU the network's convolutions run in blocks of `CPU_BLOCK` channels: the half-width network
    (3, 16, 32 and 64 channels, stride 2 and upsampling) paints, and its gradient is, what one block per
    convolution (the plain convolution) gives, to within what rounding changes (the amplification of a
    1e-6 change of the photo)."""
    model, params = transform.model_for("johnson_half"), transform.init_params("johnson_half", jax.random.key(6))
    image = np.random.default_rng(6).uniform(0, 1, (1, 20, 28, 3)).astype(np.float32)
    probe = np.random.default_rng(7).normal(size=image.shape).astype(np.float32)

    def programs(block: int):
        """The painting and gradient programs, compiled while ``CPU_BLOCK`` is ``block`` (read when tracing)."""
        monkeypatch.setattr(transform, "CPU_BLOCK", block)
        paint = jax.jit(lambda x: transform.apply(model, params, x)).lower(image)
        grad = jax.jit(lambda x: ravel_pytree(jax.grad(  # every parameter's
            lambda p: jnp.sum(transform.apply(model, p, x) * probe))(params))[0]).lower(image)
        convolutions = paint.as_text().count("stablehlo.convolution")
        paint, grad = paint.compile(), grad.compile()
        return (lambda x: np.asarray(paint(x))), (lambda x: np.asarray(grad(x))), convolutions

    paint16, grad16, blocked = programs(16)
    plain_paint, plain_grad, plain = programs(10**6)
    assert blocked > 2 * plain  # the blocked program is another one (measured: 182 against 16 convolutions)
    # Measured: 1.3e-6 apart against a tolerance of 2.2e-5 (pictures), 4.4e-5 against 9.7e-4 (gradients).
    for mine, reference in ((paint16, plain_paint), (grad16, plain_grad)):
        np.testing.assert_allclose(mine(image), reference(image), rtol=0, atol=rounding_atol(reference, image))
