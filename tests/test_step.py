"""`jaxstyle.step`: the objective, a chunk of steps and the optimiser's state, as pure functions.

- The optimiser state moves between scales through optax's own structure.
- The remat objective (strips) equals the plain one, values and gradient.
- A step computes only the layers it needs, and its FLOPs match the count.
- Every program that must run on a GPU or TPU lowers for them here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxstyle import plan, sharding, step, strips, vgg, weights
from jaxstyle.config import STYLE_LAYERS, StylizeConfig
from lowering import lower_chunk
from synthetic import grating as _photo

TINY = weights.model_for({"architecture": "tiny", "preprocessing": "caffe"})


def test_the_remat_objective_equals_the_plain_one(tiny_params, monkeypatch):
    """With remat the step runs blocks 1-2 in strips: same loss terms and gradient (three strips here)."""
    content, style = jnp.asarray(_photo(96, 40, seed=1)), jnp.asarray(_photo(48, 40, seed=2))
    monkeypatch.setattr(plan, "REMAT_PIXELS", 32 * 40)
    image = jnp.asarray(_photo(96, 40, seed=3))
    config = StylizeConfig(size=96)
    results = []
    def compute_targets(model):
        with jax.disable_jit():  # REMAT_PIXELS is read when tracing
            return step.compute_targets(model, tiny_params, content, (style,), jnp.ones(1),
                                        content_layers=config.content_layers, style_layers=config.style_layers)

    for model in (TINY, TINY.clone(remat=True)):
        targets = compute_targets(model)
        weights_ = step.loss_weights(config, targets)
        terms = step.loss_terms(model, tiny_params, image, targets, weights_)
        grad = jax.grad(lambda x: sum(step.loss_terms(model, tiny_params, x, targets, weights_).values()))(image)
        results.append((terms, grad))
    (terms, grad), (remat_terms, remat_grad) = results
    for key in terms:
        np.testing.assert_allclose(remat_terms[key], terms[key], rtol=1e-5, err_msg=key)
    assert float(jnp.max(jnp.abs(grad))) > 0
    np.testing.assert_allclose(remat_grad, grad, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(grad))))
    # Batches (`jaxstyle batch --remat`) vmap the strips' scan and checkpoints: item 0 is the image above.
    model = TINY.clone(remat=True)
    targets = compute_targets(model)
    weights_ = step.loss_weights(config, targets)
    batch = jnp.stack([image, jnp.asarray(_photo(96, 40, seed=4))])
    grads = jax.jit(jax.vmap(jax.grad(
        lambda x: sum(step.loss_terms(model, tiny_params, x, targets, weights_).values()))))(batch)
    np.testing.assert_allclose(grads[0], grad, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(grad))))
    assert float(jnp.max(jnp.abs(grads[1] - grads[0]))) > 0


def test_compute_targets_uses_strips_for_a_huge_style_image(tiny_params, monkeypatch):
    content, style = jnp.asarray(_photo(32, 32)), jnp.asarray(_photo(160, 48, seed=2))
    kwargs = dict(content_layers=("relu4_2",), style_layers=STYLE_LAYERS, kind="gram")
    def compute():
        with jax.disable_jit():  # the thresholds are read when tracing
            return step.compute_targets(TINY, tiny_params, content, (style,), jnp.ones(1), **kwargs)

    want = compute()
    calls = []
    original = strips.content_and_style
    monkeypatch.setattr(plan, "MAX_PIXELS", 2000)  # the style image (7680 pixels) is above, the content below
    monkeypatch.setattr(plan, "STRIP_PIXELS", 16 * 48)
    monkeypatch.setattr(strips, "content_and_style", lambda *a, **k: calls.append(a[2].shape) or original(*a, **k))
    got = compute()
    assert calls == [style.shape]  # the style image in strips, not the 32 x 32 content
    for name in STYLE_LAYERS:
        np.testing.assert_allclose(got.style[0][name], want.style[0][name], rtol=2e-5,
                                   atol=1e-5 * float(jnp.max(jnp.abs(want.style[0][name]))))


def test_conv_flops_agree_with_xla(tiny_params):
    image = jnp.asarray(_photo(32, 40))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(TINY.apply({"params": tiny_params}, x, ("relu5_1",))["relu5_1"])))
    analysis = grad.lower(image).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    if not analysis or "flops" not in analysis:
        pytest.skip("this backend gives no cost analysis")
    expected = 2 * plan.conv_flops(32, 40, "relu5_1", TINY.blocks, TINY.widths)  # forward + input gradient
    # XLA leaves out the taps that fall on padding (0.7% here) and adds ReLU, pooling and bias.
    assert 0.95 * expected <= analysis["flops"] <= 1.3 * expected


def test_a_step_computes_only_the_layers_it_needs(tiny_params):
    """Forward to the deepest layer asked for and one input-gradient convolution each: no kernel gradients."""
    import re

    content = jnp.asarray(_photo(32, 32))
    config = StylizeConfig(size=32)
    targets = step.compute_targets(TINY, tiny_params, content, (content,), jnp.ones(1),
                                       content_layers=config.content_layers, style_layers=config.style_layers)
    image = step.initial_image("content", content, 0)
    text = lower_chunk(TINY, tiny_params, image, targets, step.loss_weights(config, targets)).compile().as_text()
    convs = len(re.findall(r"\bconvolution\(", text))
    order = vgg.layer_names(TINY.blocks)
    forward = sum(n.startswith("conv") for n in order[: order.index("relu5_1") + 1])
    assert convs == 2 * forward


# ---------------------------------------------------------------- the optimiser's state between scales

def _adam_state_after_steps(image, n: int = 3):
    """Adam's state after a few real updates (non-zero moments), as `step.init_state` makes and updates it."""
    state, opt = step.init_state("adam", image, 0.05), step.transformation("adam")
    for i in range(n):
        grad = jnp.sin(image * (i + 2.0))
        _, state = opt.update(grad, state, image)
    return state


def test_resize_state_resizes_adams_moments_and_keeps_the_rest():
    image = jnp.asarray(_photo(12, 16, seed=1))
    state = _adam_state_after_steps(image)
    big = jnp.asarray(_photo(24, 32, seed=2))
    resized = step.resize_state("adam", state, big, lr=0.05)
    old, new = state.inner_state[0], resized.inner_state[0]
    # The moments (the leaves with the image's structure, found by optax) are resized bilinearly ...
    np.testing.assert_allclose(new.mu, step.resize_field(old.mu, (24, 32)), rtol=0, atol=0)
    np.testing.assert_allclose(new.nu, step.resize_field(old.nu, (24, 32)), rtol=0, atol=0)
    assert float(jnp.min(new.nu)) >= 0  # a second moment stays non-negative
    # ... and everything else (the step count, the learning rate, b1, b2, ...) is carried as it is.
    rest = lambda s: [x for x in jax.tree.leaves(s) if x.ndim < 3]  # noqa: E731
    for a, b in zip(rest(state), rest(resized), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(new.count) == 3 and float(resized.hyperparams["learning_rate"]) == pytest.approx(0.05)


def test_resize_state_finds_the_moments_by_structure_not_by_shape():
    """A hyper-parameter of image rank (here an lr of shape (1, 1, 1)) is not a moment and is not resized."""
    image = jnp.asarray(_photo(12, 16, seed=1))
    state = _adam_state_after_steps(image)
    state.hyperparams["learning_rate"] = jnp.full((1, 1, 1), 0.05)
    resized = step.resize_state("adam", state, jnp.zeros((24, 32, 3)), lr=0.05)
    assert resized.hyperparams["learning_rate"].shape == (1, 1, 1)
    assert resized.inner_state[0].mu.shape == (24, 32, 3)


def test_lbfgs_starts_afresh_at_each_scale_and_the_average_is_resized():
    big = jnp.asarray(_photo(24, 32, seed=2))
    fresh = step.init_state("lbfgs", big, 0.02)
    for a, b in zip(jax.tree.leaves(step.resize_state("lbfgs", step.init_state("lbfgs", big[:12, :16], 0.02), big,
                                                      0.02)), jax.tree.leaves(fresh), strict=True):
        np.testing.assert_array_equal(a, b)
    ema = optax.ema(0.9)
    state = ema.update(jnp.asarray(_photo(12, 16)), step.init_average(0.9, jnp.zeros((12, 16, 3))))[1]
    resized = step.resize_average(0.9, state, (24, 32))
    np.testing.assert_array_equal(resized.ema, step.resize_field(state.ema, (24, 32)))
    assert int(resized.count) == 1
    assert step.init_average(0.0, big) is None and step.resize_average(0.0, None, (24, 32)) is None


# ---------------------------------------------------------------- lowering for GPU and TPU

def _batch_program(tiny_params, optimizer: str, remat: bool = False):
    """The arguments of a chunk of two items, as the driver makes them."""
    model = TINY.clone(remat=remat)
    content = jnp.asarray(_photo(32, 32))
    config = StylizeConfig(size=32, optimizer=optimizer)
    targets = step.compute_targets(model, tiny_params, content, (content,), jnp.ones(1),
                                   content_layers=config.content_layers, style_layers=config.style_layers)
    two = lambda tree: jax.tree.map(lambda x: jnp.stack([x, x]), tree)  # noqa: E731
    images = two(content)
    return model, (tiny_params, images, two(step.init_state(optimizer, content, 0.02)),
                   two(step.init_average(0.9, content)), targets, two(step.loss_weights(config, targets)),
                   jnp.int32(3))


@pytest.mark.parametrize("layout, optimizer, remat", [  # remat does not combine with rows (refused)
    (layout, optimizer, remat) for layout in ("single", "batch", "rows")
    for optimizer, remat in (("adam", False), ("lbfgs", False), ("adam", True)) if not (layout == "rows" and remat)])
def test_every_layout_of_the_chunk_lowers_for_gpu_and_tpu(tiny_params, layout, optimizer, remat):
    """No host callback or CPU-only call: the program of each layout exports for CUDA and TPU here."""
    model, args = _batch_program(tiny_params, optimizer, remat)
    lay = getattr(sharding, layout)()

    def run(*args):
        return lay.run(model, *args, optimizer=optimizer, ema_decay=0.9, axes=sharding.ItemAxes(None, None))

    exported = jax.export.export(jax.jit(run), platforms=("cuda", "tpu"))(*args)
    assert exported.platforms == ("cuda", "tpu")
    assert exported.out_avals[0].shape == (2, 32, 32, 3)


def test_the_targets_and_the_report_terms_lower_for_gpu_and_tpu(tiny_params):
    content = jnp.asarray(_photo(32, 32))
    config = StylizeConfig(size=32, style_loss="mean_cov")

    def targets_and_terms(content, style, mask):
        targets = step.compute_targets(TINY, tiny_params, content, (style, style), jnp.asarray([0.5, 0.5]),
                                       (mask, 1 - mask), (mask, mask), content_layers=config.content_layers,
                                       style_layers=config.style_layers, kind="mean_cov")
        weights = step.loss_weights(config, targets, (0.5, 0.5))
        return step.loss_terms(TINY, tiny_params, content, targets, weights)

    exported = jax.export.export(jax.jit(targets_and_terms), platforms=("cuda", "tpu"))(
        content, content, jnp.ones((32, 32)))
    assert exported.platforms == ("cuda", "tpu") and len(exported.out_avals) == 3  # content, style, tv
