"""`jaxstyle.strips`: the network over horizontal strips equals the whole image, values and gradients.

With the tiny network and with the real VGG19, with masks, in stages
(``splits``), for Gram matrices and for means and covariances.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import losses, plan, step, strips, weights
from jaxstyle.config import STYLE_LAYERS
from synthetic import grating as _photo

TINY = weights.model_for({"architecture": "tiny", "preprocessing": "caffe"})


def _whole(model, params, image, layers, kind, masks=None):
    feats = model.apply({"params": params}, image, layers)
    return {n: losses.style_statistics(feats[n], kind, None if masks is None else masks[n]) for n in layers}


@pytest.mark.parametrize("kind", ["gram", "mean_cov"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_strips_equal_the_whole_image_tiny(tiny_params, kind, jit):
    # 250 rows in strips of 16 with a halo of 64: strips 4 to 10 run in the loop, the last one is partial.
    image = jnp.asarray(_photo(250, 40))
    # Rows of context for relu5_1 of the tiny net, blocks (2, 2, 2, 2, 2): convolutions 2*1 + 2*2 + 2*4 + 2*8
    # + 1*16 = 46, poolings 1 + 2 + 4 + 8 = 15; 61 rounded up to a multiple of 16.
    assert TINY.blocks == (2, 2, 2, 2, 2)
    assert plan.halo_rows(TINY.blocks, STYLE_LAYERS) == 64
    fn = functools.partial(strips.style_statistics, TINY, tiny_params, layers=STYLE_LAYERS, kind=kind, rows=16)
    got = (jax.jit(fn) if jit else fn)(image)
    want = _whole(TINY, tiny_params, image, STYLE_LAYERS, kind)
    for name in STYLE_LAYERS:
        for g, e in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name])):
            np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-5 * float(jnp.max(jnp.abs(e))), err_msg=name)


def test_strips_without_halo_would_be_wrong(tiny_params, monkeypatch):
    """The halo is what makes the sum exact (this test fails if the halo were not needed)."""
    image = jnp.asarray(_photo(250, 40))
    want = _whole(TINY, tiny_params, image, STYLE_LAYERS, "gram")
    monkeypatch.setattr(strips, "halo_rows", lambda blocks, layers, start=None: 0)
    got = strips.style_statistics(TINY, tiny_params, image, STYLE_LAYERS, rows=16)
    error = max(float(jnp.max(jnp.abs(got[n] - want[n])) / jnp.max(jnp.abs(want[n]))) for n in STYLE_LAYERS)
    assert error > 1e-3


def test_strips_with_masks_equal_the_whole_image(tiny_params):
    image = jnp.asarray(_photo(100, 52, seed=3))
    mask = jnp.asarray(_photo(100, 52, seed=4)[..., 0])
    masks = step.layer_masks(TINY, tiny_params, mask, image.shape, STYLE_LAYERS)
    for kind in ("gram", "mean_cov"):
        got = strips.style_statistics(TINY, tiny_params, image, STYLE_LAYERS, kind, masks, rows=16)
        want = _whole(TINY, tiny_params, image, STYLE_LAYERS, kind, masks)
        for name in STYLE_LAYERS:
            for g, e in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want[name])):
                np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-5 * float(jnp.max(jnp.abs(e))))


def test_strips_refuse_misaligned_rows(tiny_params):
    with pytest.raises(ValueError, match="multiple of 16"):
        strips.style_statistics(TINY, tiny_params, jnp.zeros((64, 32, 3)), STYLE_LAYERS, rows=24)


def test_strips_equal_the_whole_image_real_vgg19(real_weights):
    params, meta = real_weights
    model = weights.model_for(meta)
    # 352 rows in strips of 32: strips 3 to 7 run in the loop (their halo of 96 rows fits), the rest around it.
    image = jnp.asarray(_photo(352, 40, seed=1))
    got = jax.jit(functools.partial(strips.style_statistics, model, params, layers=STYLE_LAYERS, rows=32))(image)
    want = _whole(model, params, image, STYLE_LAYERS, "gram")
    for name in STYLE_LAYERS:
        scale = float(jnp.max(jnp.abs(want[name])))
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name)


def _random_cotangents(tree, seed: int):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("splits", [(), ("pool3",), ("pool1", "pool2", "pool4")])
@pytest.mark.parametrize("kind", ["gram", "mean_cov"])
def test_content_and_style_in_strips_and_their_gradient_equal_the_whole_image(tiny_params, splits, kind):
    """Values and vector-Jacobian products, with two style regions (one masked), against the whole image."""
    image = jnp.asarray(_photo(250, 40, seed=5))
    content_layers, style_layers = ("relu2_2", "relu4_2"), STYLE_LAYERS
    masks = (None, step.layer_masks(TINY, tiny_params, jnp.asarray(_photo(250, 40, seed=6)[..., 0]), image.shape,
                                    style_layers))

    def whole(x):
        feats = TINY.apply({"params": tiny_params}, x, content_layers + style_layers)
        return ({n: feats[n] for n in content_layers},
                tuple({n: losses.style_statistics(feats[n], kind, None if m is None else m[n]) for n in style_layers}
                      for m in masks))

    in_strips = functools.partial(strips.content_and_style, TINY, tiny_params, content_layers=content_layers,
                                  style_layers=style_layers, kind=kind, masks=masks, pixels=16 * 40, splits=splits)
    want, want_vjp = jax.vjp(whole, image)
    got, got_vjp = jax.vjp(jax.jit(in_strips), image)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(e))))
    cotangents = _random_cotangents(want, seed=7)
    (g,), (e,) = got_vjp(cotangents), want_vjp(cotangents)
    assert float(jnp.max(jnp.abs(e))) > 0
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=2e-5 * float(jnp.max(jnp.abs(e))))
