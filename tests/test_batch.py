"""`jaxstyle.batch`: batches and sweeps are items of the one driver, on the tiny random network.

The reference is always the single-image `optimize.stylize`: item i of a batch
and point k of a sweep must equal it run alone with the same settings and seed
(up to rounding, at a tolerance measured for each problem).
"""

from __future__ import annotations


import jax
import numpy as np
import pytest

from jaxstyle import batch, optimize, plan, sharding, step
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError
from tolerance import assert_like_single_run, rounding_atol

# Batches are compared with single runs at a tolerance measured for each problem
# (`tolerance.assert_like_single_run`): a batched program sums in another order.



def _photo(height: int, width: int, seed: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x / (width - 1), y / (height - 1), 0.5 + 0.3 * np.sin(x / 5.0) * np.cos(y / 4.0)], -1)
    return np.clip(image + np.random.default_rng(seed).normal(0, 0.05, image.shape), 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def style() -> np.ndarray:
    return np.random.default_rng(7).random((30, 30, 3)).astype(np.float32)


# ----------------------------------------------------------------------------
# The library: a batch of N is N single runs, a sweep of K is K single runs


def test_batch_equals_single_runs_with_the_same_seeds(tiny, style):
    # Three landscape photos (one program, batches of 2: the second padded) and a portrait (another).
    contents = [_photo(30, 40, 1), _photo(30, 40, 2), _photo(30, 40, 3), _photo(40, 30, 4)]
    config = StylizeConfig(size=32, steps=12, init="noise")
    seeds = [5, 6, 7, 8]
    seen = []
    out = batch.stylize_batch(contents, style, tiny, config, seeds=seeds, batch_size=2, callback=seen.append)
    for content, seed, result in zip(contents, seeds, out):
        assert_like_single_run(result, content, style, tiny, config.replace(seed=seed))
    assert out[3].shape == (32, 24, 3)
    assert {p.items for p in seen} == {(0, 1), (2,), (3,)}
    # Programs of 2 for the landscapes (the second batch padded), of 1 for the lone portrait.
    assert all(p.images.shape[0] == (1 if p.items == (3,) else 2) and p.losses.shape[0] == len(p.items)
               for p in seen)
    assert np.abs(out[0] - out[1]).max() > 0.05  # different contents and seeds give different images


def test_batch_with_lbfgs_scales_averaging_and_colour_preservation(tiny, style):
    contents = [_photo(30, 40, 1), _photo(30, 40, 2)]
    for config in [StylizeConfig(size=32, steps=10, optimizer="lbfgs"),
                   StylizeConfig(size=32, steps=10, multiscale=True, scales=(24,), ema_decay=0.9,
                                 preserve_colors="luminance", init="noise")]:
        out = batch.stylize_batch(contents, style, tiny, config)
        for content, result in zip(contents, out):
            assert_like_single_run(result, content, style, tiny, config)


def test_sweep_equals_single_runs(tiny, style):
    content = _photo(30, 40, 1)
    config = StylizeConfig(size=32, steps=12, init="noise")
    grid = {"style_weight": [1.0, 1e3], "lr": [0.02, 0.05], "seed": [0, 1]}
    results = batch.sweep(content, style, tiny, config, grid=grid)
    assert [point for point, _ in results] == plan.grid_points(grid)
    assert len(results) == 8
    for point, image in results:
        assert_like_single_run(image, content, style, tiny, config.replace(**point))
    assert np.abs(results[0][1] - results[4][1]).max() > 0.01  # the style weight matters


def test_a_sweep_with_masks_applies_them_to_every_point(tiny, style):
    """The content image's masks apply to every point: each equals `stylize` with those masks."""
    content = _photo(30, 40, 1)
    left = np.zeros((30, 40), np.float32)
    left[:, :20] = 1
    other = _photo(30, 30, 5)
    masks = [(left, np.ones((30, 30), np.float32)), (1 - left, np.ones((30, 30), np.float32))]
    config = StylizeConfig(size=32, steps=10, init="noise")
    results = batch.sweep(content, [style, other], tiny, config, grid={"style_weight": [1.0, 100.0]}, masks=masks)
    for point, image in results:
        start = np.asarray(step.initial_image("noise", step.resize(content, (24, 32)), 0))
        run = lambda init: optimize.stylize(content, [style, other], tiny, config.replace(**point),  # noqa: E731
                                            masks=masks, init=init)
        np.testing.assert_allclose(image, run(start), rtol=0, atol=rounding_atol(run, start))
    unmasked = batch.sweep(content, [style, other], tiny, config, grid={"style_weight": [1.0, 100.0]})
    assert np.abs(unmasked[1][1] - results[1][1]).max() > 0.05  # the masks matter


def test_a_batch_of_8_same_size_images_compiles_the_step_once(tiny, style):
    contents = [_photo(36, 44, seed) for seed in range(8)]  # a shape no other test uses
    config = StylizeConfig(size=44, steps=25)  # three chunks: 10, 10, 5 steps
    before = sharding._run_batch._cache_size()
    batch.stylize_batch(contents, style, tiny, config)
    assert sharding._run_batch._cache_size() == before + 1
    # Other weights, learning rate and seeds: the same program.
    batch.stylize_batch(contents, style, tiny, config.replace(style_weight=100.0, lr=0.05), seeds=range(8))
    assert sharding._run_batch._cache_size() == before + 1


def test_an_item_that_becomes_nan_fails_alone(tiny, style):
    contents = [_photo(30, 40, 1), _photo(30, 40, 2)]
    contents[1][3, 3, 0] = np.nan
    config = StylizeConfig(size=32, steps=10, init="noise")
    good, bad = batch.stylize_batch(contents, style, tiny, config)
    assert isinstance(bad, optimize.NonFiniteLoss) and "item 1" in str(bad)
    assert_like_single_run(good, contents[0], style, tiny, config)


@pytest.mark.parametrize("call, words", [
    (lambda net, s: batch.stylize_batch([], s, net), "no content images"),
    (lambda net, s: batch.stylize_batch([_photo(30, 40, 1)], s, net, seeds=[1, 2]), "2 seeds"),
    (lambda net, s: batch.stylize_batch([_photo(30, 40, 1)], s, net, batch_size=0), "`batch_size`"),
    (lambda net, s: batch.stylize_batch([np.zeros((30, 40))], s, net), "shape (30, 40)"),
    (lambda net, s: batch.sweep(_photo(30, 40, 1), s, net, grid={}), "empty"),
    (lambda net, s: batch.sweep(_photo(30, 40, 1), s, net, grid={"size": [32, 64]}), "cannot sweep `size`"),
    (lambda net, s: batch.sweep(_photo(30, 40, 1), s, net, grid={"seed": [0, 1]}), "use init 'noise'"),
    (lambda net, s: batch.sweep(_photo(30, 40, 1), s, net, grid={"tv_weight": [1, -1]}), "got -1"),
])
def test_bad_arguments_are_usage_errors(tiny, style, call, words):
    with pytest.raises(UsageError, match=None) as info:
        call(tiny, style)
    assert words in str(info.value)


def test_pure_losses_vmap_and_grad_directly(tiny, style):
    """The README's example: the loss functions are pure, so grad and vmap apply to them directly."""
    from jaxstyle import losses

    layers = ("relu1_1", "relu2_1")
    feats = jax.vmap(lambda im: tiny.features(im, layers))(np.stack([_photo(30, 40, s) for s in range(3)]))
    target = losses.gram_matrix(tiny.features(style, layers)["relu1_1"])
    per_image = jax.vmap(lambda f: losses.gram_distance(losses.gram_matrix(f), target))(feats["relu1_1"])
    loop = [losses.gram_distance(losses.gram_matrix(f), target) for f in feats["relu1_1"]]
    np.testing.assert_allclose(per_image, loop, rtol=1e-6)
    grad = jax.grad(lambda im: losses.gram_distance(losses.gram_matrix(tiny.features(im, layers)["relu1_1"]),
                                                    target))(_photo(30, 40, 0))
    assert grad.shape == (30, 40, 3) and np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
