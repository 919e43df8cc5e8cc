"""Speed and memory machinery, checked by its structure, never by a clock.

- The persistent compilation cache: where it lives, that a second process
  finds the first one's programs (cache hits, no new entries), and that the
  command line turns it on.
- Style statistics in strips (`jaxstyle.strips`): equal to the whole image's,
  with the tiny network and with the real VGG19, and so are their gradients
  and the ``--remat`` step's loss terms and gradient.
- The FLOP count of `vgg.conv_flops` against a hand count and XLA's own.
- Rematerialisation lowers the compiled step's temporary memory, below a
  quarter at 1024 px (``memory_analysis``, exact and cheap: nothing is run).
- 2x2 pooling as a reshape equals ``reduce_window`` pooling, values and gradient.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import losses, optimize, runtime, strips, vgg, weights
from jaxstyle.config import STYLE_LAYERS, StylizeConfig

TINY = weights.model_for({"architecture": "tiny", "preprocessing": "caffe"})


@pytest.fixture(scope="module")
def tiny_params():
    params = vgg.init_params("tiny", jax.random.key(0))
    keys = iter(jax.random.split(jax.random.key(1), 100))
    return {n: {**p, "bias": 0.1 * jax.random.normal(next(keys), p["bias"].shape)} for n, p in params.items()}


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth image with texture: gradients, a sine grating and noise, RGB in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    image = np.stack([xx, yy, 0.5 + 0.4 * np.sin(12 * xx + 5 * yy)], -1) + 0.1 * rng.standard_normal((h, w, 3))
    return np.clip(image, 0, 1).astype(np.float32)


# ---------------------------------------------------------------- compilation cache

def test_cache_dir_is_in_the_user_cache_and_the_environment_overrides_it(monkeypatch, tmp_path):
    monkeypatch.delenv(runtime.CACHE_ENV, raising=False)
    assert runtime.compilation_cache_dir() == weights.cache_dir() / "xla"
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "c"))
    assert runtime.compilation_cache_dir() == tmp_path / "c"
    for off in ("off", "0", "OFF"):
        monkeypatch.setenv(runtime.CACHE_ENV, off)
        assert runtime.compilation_cache_dir() is None
        assert runtime.enable_compilation_cache() is None


def test_xla_flags_keep_the_users_settings():
    assert runtime.xla_flags(("--a=1", "--b=2"), "--b=3 --c") == "--b=3 --c --a=1"
    assert runtime.xla_flags((), "") == ""


_COMPILE_TWICE = """
import json, sys
from jaxstyle import runtime
path = runtime.enable_compilation_cache(sys.argv[1])
import jax, jax.numpy as jnp
hits, misses = [], []
def listen(event, **kwargs):
    (hits if event.endswith("cache_hits") else misses if event.endswith("cache_misses") else []).append(event)
jax.monitoring.register_event_listener(listen)
from jaxstyle import optimize, vgg, weights
model = weights.model_for({"architecture": "tiny", "preprocessing": "caffe"})
params = vgg.init_params("tiny", jax.random.key(0))
image = jnp.full((40, 48, 3), 0.5)
step = jax.jit(jax.grad(lambda x: sum(jnp.sum(f ** 2) for f in model.apply({"params": params}, x, ("relu3_1",)).values())))
step(image).block_until_ready()
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir, "hits": len(hits), "misses": len(misses)}))
"""


def test_a_second_process_loads_the_first_ones_programs(tmp_path):
    cache = tmp_path / "xla"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop(runtime.CACHE_ENV, None)
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _COMPILE_TWICE, str(cache)], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        runs[-1]["entries"] = sorted(p.name for p in cache.iterdir())
    first, second = runs
    assert first["dir"] == str(cache)
    assert first["misses"] > 0 and first["hits"] == 0 and first["entries"]
    # Every program of the second run comes from the cache, and it adds nothing.
    assert second["hits"] == first["misses"] and second["misses"] == 0
    assert second["entries"] == first["entries"]


def test_the_command_line_fills_the_cache(tiny_weights, tmp_path):
    cache = tmp_path / "xla"
    content = tmp_path / "c.png"
    from jaxstyle import images

    images.save_image(content, _photo(24, 32))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", runtime.CACHE_ENV: str(cache)}
    script = pathlib.Path(sys.executable).with_name("jaxstyle")  # the console script of this venv
    done = subprocess.run([str(script), "stylize", str(content), "--style", str(content),
                           "-o", str(tmp_path / "o.png"), "--size", "32", "--steps", "2", "--weights",
                           str(tiny_weights), "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(cache.iterdir())) > 0


# ---------------------------------------------------------------- strips

def _whole(model, params, image, layers, kind, masks=None):
    feats = model.apply({"params": params}, image, layers)
    return {n: losses.style_statistics(feats[n], kind, None if masks is None else masks[n]) for n in layers}


def test_halo_of_vgg19_covers_the_receptive_field_of_relu5_1():
    # conv: 2*1 + 2*2 + 4*4 + 4*8 + 1*16 = 70 rows, pool: 1 + 2 + 4 + 8 = 15; 85 rounded to a multiple of 16.
    assert strips.halo_rows(vgg.VGG19_BLOCKS, STYLE_LAYERS) == 96
    assert strips.row_scale(vgg.VGG19_BLOCKS, "relu5_1") == 16
    assert strips.row_scale(vgg.VGG19_BLOCKS, "pool1") == 2
    assert strips.halo_rows(vgg.VGG19_BLOCKS, ("relu1_1",)) == 1
    assert strips.strip_rows(4096, vgg.VGG19_BLOCKS, STYLE_LAYERS, pixels=2**21) == 512
    # The stages of --remat: up to pool2 (conv 1 + 1 + 2 + 2, pool 1 + 2 = 9 rows, rounded to 4), then from
    # pool2's activation to pool3 (4 convolutions and a pooling, 5 rows of pool2, rounded to 2).
    assert strips.halo_rows(vgg.VGG19_BLOCKS, ("pool2",)) == 12
    assert strips.halo_rows(vgg.VGG19_BLOCKS, ("pool3",), start="pool2") == 6
    assert strips.row_scale(vgg.VGG19_BLOCKS, "relu4_1", start="pool2") == 2
    with pytest.raises(ValueError, match="`splits` must be pooling layers"):
        strips.content_and_style(vgg.VGG19(), {}, jnp.zeros((64, 64, 3)), (), STYLE_LAYERS, splits=("pool3", "pool2"))


@pytest.mark.parametrize("kind", ["gram", "mean_cov"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_strips_equal_the_whole_image_tiny(tiny_params, kind, jit):
    # 250 rows in strips of 16 with a halo of 64: strips 4 to 10 run in the loop, the last one is partial.
    image = jnp.asarray(_photo(250, 40))
    # Rows of context for relu5_1 of the tiny net, blocks (2, 2, 2, 2, 2): convolutions 2*1 + 2*2 + 2*4 + 2*8
    # + 1*16 = 46, poolings 1 + 2 + 4 + 8 = 15; 61 rounded up to a multiple of 16.
    assert TINY.blocks == (2, 2, 2, 2, 2)
    assert strips.halo_rows(TINY.blocks, STYLE_LAYERS) == 64
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
    shapes = jax.eval_shape(lambda x: TINY.apply({"params": tiny_params}, x, STYLE_LAYERS), image)
    masks = optimize._layer_masks(mask, shapes)
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
    shapes = jax.eval_shape(lambda x: TINY.apply({"params": tiny_params}, x, style_layers), image)
    masks = (None, optimize._layer_masks(jnp.asarray(_photo(250, 40, seed=6)[..., 0]), shapes))

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


def test_the_remat_objective_equals_the_plain_one(tiny_params, monkeypatch):
    """With remat the step runs blocks 1-2 in strips: same loss terms and gradient (three strips here)."""
    content, style = jnp.asarray(_photo(96, 40, seed=1)), jnp.asarray(_photo(48, 40, seed=2))
    monkeypatch.setattr(strips, "REMAT_PIXELS", 32 * 40)
    image = jnp.asarray(_photo(96, 40, seed=3))
    config = StylizeConfig(size=96)
    results = []
    for model in (TINY, TINY.clone(remat=True)):
        targets = optimize.compute_targets.__wrapped__(
            model, tiny_params, content, (style,), jnp.ones(1), content_layers=config.content_layers,
            style_layers=config.style_layers)
        weights_ = optimize.loss_weights(config, targets)
        terms = optimize._terms(model, tiny_params, image, targets, weights_)
        grad = jax.grad(lambda x: sum(optimize._terms(model, tiny_params, x, targets, weights_).values()))(image)
        results.append((terms, grad))
    (terms, grad), (remat_terms, remat_grad) = results
    for key in terms:
        np.testing.assert_allclose(remat_terms[key], terms[key], rtol=1e-5, err_msg=key)
    assert float(jnp.max(jnp.abs(grad))) > 0
    np.testing.assert_allclose(remat_grad, grad, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(grad))))
    # Batches (`jaxstyle batch --remat`) vmap the strips' scan and checkpoints: item 0 is the image above.
    model = TINY.clone(remat=True)
    targets = optimize.compute_targets.__wrapped__(model, tiny_params, content, (style,), jnp.ones(1),
                                                   content_layers=config.content_layers,
                                                   style_layers=config.style_layers)
    weights_ = optimize.loss_weights(config, targets)
    batch = jnp.stack([image, jnp.asarray(_photo(96, 40, seed=4))])
    grads = jax.jit(jax.vmap(jax.grad(
        lambda x: sum(optimize._terms(model, tiny_params, x, targets, weights_).values()))))(batch)
    np.testing.assert_allclose(grads[0], grad, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(grad))))
    assert float(jnp.max(jnp.abs(grads[1] - grads[0]))) > 0


def test_compute_targets_uses_strips_for_a_huge_style_image(tiny_params, monkeypatch):
    content, style = jnp.asarray(_photo(32, 32)), jnp.asarray(_photo(160, 48, seed=2))
    kwargs = dict(content_layers=("relu4_2",), style_layers=STYLE_LAYERS, kind="gram")
    compute = optimize.compute_targets.__wrapped__  # un-jitted: the threshold is read when tracing
    want = compute(TINY, tiny_params, content, (style,), jnp.ones(1), **kwargs)
    calls = []
    original = strips.content_and_style
    monkeypatch.setattr(strips, "MAX_PIXELS", 2000)  # the style image (7680 pixels) is above, the content below
    monkeypatch.setattr(strips, "STRIP_PIXELS", 16 * 48)
    monkeypatch.setattr(strips, "content_and_style", lambda *a, **k: calls.append(a[2].shape) or original(*a, **k))
    got = compute(TINY, tiny_params, content, (style,), jnp.ones(1), **kwargs)
    assert calls == [style.shape]  # the style image in strips, not the 32 x 32 content
    for name in STYLE_LAYERS:
        np.testing.assert_allclose(got.style[0][name], want.style[0][name], rtol=2e-5,
                                   atol=1e-5 * float(jnp.max(jnp.abs(want.style[0][name]))))


# ---------------------------------------------------------------- FLOPs

def test_conv_flops_by_hand():
    # tiny: conv1_1 3->4 and conv1_2 4->4 at 8x6, pool, conv2_1 4->6 and conv2_2 6->6 at 4x3.
    assert vgg.conv_flops(8, 6, "conv1_1", vgg._TINY_BLOCKS, vgg._TINY_WIDTHS) == 2 * 8 * 6 * 9 * 3 * 4
    assert vgg.conv_flops(8, 6, "relu2_1", vgg._TINY_BLOCKS, vgg._TINY_WIDTHS) == \
        2 * 9 * (8 * 6 * 3 * 4 + 8 * 6 * 4 * 4 + 4 * 3 * 4 * 6)
    assert vgg.conv_flops(9, 7, "pool2", vgg._TINY_BLOCKS, vgg._TINY_WIDTHS) == \
        2 * 9 * (9 * 7 * 3 * 4 + 9 * 7 * 4 * 4 + 4 * 3 * 4 * 6 + 4 * 3 * 6 * 6)  # odd sizes: pooling rounds down
    # VGG19 to relu5_1 at 224 x 224: the well-known ~19.6 GFLOPs of the full net minus the last 3 convs of block 5.
    assert vgg.conv_flops(224, 224, "relu5_1") == 2 * 9 * sum(
        h * h * cin * cout for h, cin, cout in [(224, 3, 64), (224, 64, 64), (112, 64, 128), (112, 128, 128),
                                                (56, 128, 256), *[(56, 256, 256)] * 3, (28, 256, 512),
                                                *[(28, 512, 512)] * 3, (14, 512, 512)])
    with pytest.raises(ValueError, match="relu9_9"):
        vgg.conv_flops(8, 8, "relu9_9")


def test_conv_flops_agree_with_xla(tiny_params):
    image = jnp.asarray(_photo(32, 40))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(TINY.apply({"params": tiny_params}, x, ("relu5_1",))["relu5_1"])))
    analysis = grad.lower(image).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    if not analysis or "flops" not in analysis:
        pytest.skip("this backend gives no cost analysis")
    expected = 2 * vgg.conv_flops(32, 40, "relu5_1", TINY.blocks, TINY.widths)  # forward + input gradient
    # XLA leaves out the taps that fall on padding (0.7% here) and adds ReLU, pooling and bias.
    assert 0.95 * expected <= analysis["flops"] <= 1.3 * expected


def test_a_step_computes_only_the_layers_it_needs(tiny_params):
    """Forward to the deepest layer asked for and one input-gradient convolution each: no kernel gradients."""
    import re

    content = jnp.asarray(_photo(32, 32))
    config = StylizeConfig(size=32)
    targets = optimize.compute_targets(TINY, tiny_params, content, (content,), jnp.ones(1),
                                       content_layers=config.content_layers, style_layers=config.style_layers)
    image = optimize.initial_image("content", content, 0)
    text = optimize._run_chunk.lower(TINY, tiny_params, image, optimize.init_state("adam", image, 0.02), None,
                                     targets, optimize.loss_weights(config, targets), jnp.int32(1),
                                     optimizer="adam", ema_decay=0.0).compile().as_text()
    convs = len(re.findall(r"\bconvolution\(", text))
    order = vgg.layer_names(TINY.blocks)
    forward = sum(n.startswith("conv") for n in order[: order.index("relu5_1") + 1])
    assert convs == 2 * forward


# ---------------------------------------------------------------- memory

def _step_temp_bytes(model, params, size: int, compiler_options=None, height: int | None = None) -> int:
    """Temporary memory of the compiled chunk of optimisation steps (nothing is run)."""
    content = jnp.asarray(_photo(height or size, size))
    config = StylizeConfig(size=size)
    targets = optimize.compute_targets(model, params, content, (content,), jnp.ones(1),
                                       content_layers=config.content_layers, style_layers=config.style_layers)
    image = optimize.initial_image("content", content, 0)
    state = optimize.init_state("adam", image, 0.02)
    lowered = optimize._run_chunk.lower(model, params, image, state, None, targets,
                                        optimize.loss_weights(config, targets), jnp.int32(1),
                                        optimizer="adam", ema_decay=0.0)
    return lowered.compile(compiler_options).memory_analysis().temp_size_in_bytes


def _scheduler(flags: tuple[str, ...]) -> dict:
    """`runtime` flags as per-program compiler options (the test process has its own XLA_FLAGS)."""
    return dict(f.lstrip("-").split("=") for f in flags)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU scheduler and memory figures")
def test_the_default_cpu_flags_and_remat_lower_the_temporary_memory_of_a_step(real_weights):
    params, meta = real_weights
    model = weights.model_for(meta)
    default = _step_temp_bytes(model, params, 256)
    ours = _step_temp_bytes(model, params, 256, _scheduler(runtime.DEFAULT_CPU_FLAGS))
    remat = _step_temp_bytes(model.clone(remat=True), params, 256, _scheduler(runtime.DEFAULT_CPU_FLAGS))
    # Measured: 192, 128 and 64 MiB (BENCHMARKS.md has 512 and 1024 px).
    assert ours < 0.8 * default
    assert remat < 0.7 * ours


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU scheduler and memory figures")
def test_remat_at_1024_px_needs_under_half_the_temporary_memory(real_weights):
    """The issue's target, on XLA's exact figures (BENCHMARKS.md has the whole process's peak, 0.47-0.49)."""
    params, meta = real_weights
    model = weights.model_for(meta)
    plain = _step_temp_bytes(model, params, 1024, _scheduler(runtime.DEFAULT_CPU_FLAGS), height=681)
    low = _scheduler(runtime.DEFAULT_CPU_FLAGS + runtime.LOW_MEMORY_CPU_FLAGS)
    remat = _step_temp_bytes(model.clone(remat=True), params, 1024, low, height=681)
    # Measured: 1300 and 205 MiB (the bundled photo's 681 x 1024).
    assert remat < 0.25 * plain


# ---------------------------------------------------------------- pooling

@pytest.mark.parametrize("shape", [(1, 8, 10, 3), (1, 7, 9, 2), (2, 1, 6, 6, 4)])
def test_reshape_pooling_equals_reduce_window(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    flat = x.reshape(-1, *shape[-3:])
    np.testing.assert_array_equal(vgg.pool2x2(x, "max").reshape(-1, *vgg.pool2x2(x, "max").shape[-3:]),
                                  nn.max_pool(flat, (2, 2), strides=(2, 2)))
    np.testing.assert_allclose(vgg.pool2x2(flat, "avg"), nn.avg_pool(flat, (2, 2), strides=(2, 2)), rtol=1e-6)
    # Random values have no ties: the gradients are the same too.
    g_reshape = jax.grad(lambda x: jnp.sum(jnp.sin(vgg.pool2x2(x, "max"))))(flat)
    g_window = jax.grad(lambda x: jnp.sum(jnp.sin(nn.max_pool(x, (2, 2), strides=(2, 2)))))(flat)
    np.testing.assert_allclose(g_reshape, g_window, rtol=1e-6, atol=0)
