"""Tests of jaxstyle.vgg: numerics against a float64 NumPy reference, structure, transforms.

Numeric comparisons of activations use a per-layer norm relative to the
layer's largest reference value, ``max|a - b| <= rtol * max|ref| + atol``
(see `assert_close_rel_max`), because a ReLU network has many exact zeros and
deep layers of a randomly initialised net are much smaller than shallow ones.
"""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_vgg
from jaxstyle import vgg

TINY_BLOCKS, TINY_WIDTHS = vgg.ARCHITECTURES["tiny"]
# Odd height and width, so that every pooling floors an odd size somewhere.
IMAGE_SHAPE = (37, 29, 3)

VGG19_LAYERS = (
    "conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1",
    "conv2_1", "relu2_1", "conv2_2", "relu2_2", "pool2",
    "conv3_1", "relu3_1", "conv3_2", "relu3_2", "conv3_3", "relu3_3", "conv3_4", "relu3_4", "pool3",
    "conv4_1", "relu4_1", "conv4_2", "relu4_2", "conv4_3", "relu4_3", "conv4_4", "relu4_4", "pool4",
    "conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3", "conv5_4", "relu5_4", "pool5",
)  # fmt: skip

# (pooling, avg_pool_scale): the scale only matters for average pooling.
POOLINGS = [("max", 1.0), ("avg", 1.0), ("avg", 2.0)]
CONFIGS = [
    dict(pooling=p, avg_pool_scale=s, first_padding=f, preprocessing=pre)
    for (p, s), f, pre in itertools.product(POOLINGS, vgg.PADDING, vgg.PREPROCESSING)
]
CONFIG_IDS = ["-".join(str(v) for v in c.values()) for c in CONFIGS]


def assert_close_rel_max(actual, ref, *, rtol, atol, name=""):
    """Assert ``max|actual - ref| <= rtol * max|ref| + atol`` (shapes must match)."""
    actual = np.asarray(actual, np.float64)
    ref = np.asarray(ref, np.float64)
    assert actual.shape == ref.shape, f"{name}: shape {actual.shape} != reference {ref.shape}"
    if ref.size == 0:
        return
    err = np.max(np.abs(actual - ref))
    bound = rtol * np.max(np.abs(ref)) + atol
    assert err <= bound, f"{name}: max|a-b| = {err:.3e} > {bound:.3e} (max|ref| = {np.max(np.abs(ref)):.3e})"


def tiny_model(**kwargs) -> vgg.VGG:
    return vgg.VGG(blocks=TINY_BLOCKS, widths=TINY_WIDTHS, **kwargs)


@functools.lru_cache(maxsize=None)
def _tiny_params_np():
    """Tiny-preset parameters with random (non-zero) biases, as NumPy float32."""
    params = vgg.init_params("tiny", jax.random.key(0))
    keys = iter(jax.random.split(jax.random.key(1), len(params)))
    # Flax initialises biases to zero; random ones make the bias add part of the test.
    params = {
        name: {"kernel": p["kernel"], "bias": 0.5 * jax.random.normal(next(keys), p["bias"].shape)}
        for name, p in params.items()
    }
    return jax.tree.map(np.asarray, params)


def tiny_params(dtype=jnp.float32):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), _tiny_params_np())


def random_image(seed=2, shape=IMAGE_SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


def count_primitive(jaxpr, primitive: str) -> int:
    """Occurrences of ``primitive`` in ``jaxpr``, including nested jaxprs (remat, pjit...)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # ClosedJaxpr -> Jaxpr
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == primitive
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    count += count_primitive(sub, primitive)
    return count


# ----------------------------------------------------------------------------
# Numerics against the float64 NumPy reference.


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_tiny_matches_numpy_reference_float32(config):
    model = tiny_model(**config)
    layers = vgg.layer_names(TINY_BLOCKS)
    image = random_image()
    ref = numpy_vgg.vgg_features(_tiny_params_np(), image, blocks=TINY_BLOCKS, **config)
    with jax.default_matmul_precision("highest"):  # no TF32/bf16 passes on accelerators
        out = jax.jit(model.apply, static_argnums=2)({"params": tiny_params()}, image, layers)
    assert set(out) == set(layers)
    for name in layers:
        assert out[name].dtype == jnp.float32
        assert_close_rel_max(out[name], ref[name], rtol=1e-5, atol=1e-12, name=name)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_tiny_matches_numpy_reference_float64(config):
    layers = vgg.layer_names(TINY_BLOCKS)
    image = random_image().astype(np.float64)
    ref = numpy_vgg.vgg_features(_tiny_params_np(), image, blocks=TINY_BLOCKS, **config)
    with jax.enable_x64(True):
        model = tiny_model(dtype=jnp.float64, **config)
        params = tiny_params(jnp.float64)
        out = jax.jit(model.apply, static_argnums=2)({"params": params}, jnp.asarray(image), layers)
        for name in layers:
            assert out[name].dtype == jnp.float64
            assert_close_rel_max(out[name], ref[name], rtol=1e-12, atol=1e-300, name=name)


def test_reference_pooling_floors_odd_sizes():
    """The reference itself: a hand-computed 3x5 pooling, so the floor is not assumed twice."""
    x = np.arange(15.0).reshape(3, 5, 1)
    np.testing.assert_allclose(numpy_vgg.pool2x2(x, "max")[..., 0], [[6.0, 8.0]], rtol=0, atol=0)
    np.testing.assert_allclose(numpy_vgg.pool2x2(x, "avg", 2.0)[..., 0], [[6.0, 10.0]], rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------
# Transforms: remat, vmap, jit.


@pytest.mark.parametrize(
    "config",
    [dict(), dict(pooling="avg", avg_pool_scale=2.0, first_padding="replicate", preprocessing="torchvision")],
    ids=["max-zeros-caffe", "avg2-replicate-torchvision"],
)
def test_remat_same_activations_and_gradient(config):
    # Deepest layer in the middle of a block, so remat's static `last` argument is exercised.
    layers = ("relu1_1", "pool2", "conv3_2")
    params = {"params": tiny_params()}
    image = jnp.asarray(random_image())
    weights = {
        name: jax.random.normal(jax.random.key(i), tiny_model().apply(params, image, [name])[name].shape)
        for i, name in enumerate(layers)
    }

    def loss_and_acts(model, x):
        acts = model.apply(params, x, layers)
        return sum(jnp.vdot(weights[n], acts[n]) for n in layers), acts

    results = {}
    for remat in (False, True):
        fn = jax.jit(jax.value_and_grad(functools.partial(loss_and_acts, tiny_model(remat=remat, **config)), has_aux=True))
        (_, acts), grad = fn(image)
        results[remat] = acts, grad
    (acts0, grad0), (acts1, grad1) = results[False], results[True]
    for name in layers:
        assert_close_rel_max(acts1[name], acts0[name], rtol=1e-6, atol=1e-12, name=name)
    assert float(jnp.max(jnp.abs(grad0))) > 0.0
    assert_close_rel_max(grad1, grad0, rtol=1e-6, atol=1e-12, name="grad")


def test_start_continues_the_forward_pass_from_a_pooling_layer():
    model, params = tiny_model(), {"params": tiny_params()}
    image = jnp.asarray(random_image())
    whole = model.apply(params, image, ("pool2", "relu3_1", "relu5_1"))
    for remat in (False, True):
        rest = tiny_model(remat=remat).apply(params, whole["pool2"], ("relu3_1", "relu5_1"), start="pool2")
        for name in ("relu3_1", "relu5_1"):
            assert_close_rel_max(rest[name], whole[name], rtol=1e-6, atol=1e-12, name=name)
    for start, layers in (("pool2", ("relu2_2",)), ("pool2", ("pool2",)), ("relu2_2", ("relu3_1",)),
                          ("pool9", ("relu3_1",))):
        with pytest.raises(ValueError, match="`start` must be a pooling layer before"):
            model.apply(params, whole["pool2"], layers, start=start)


def test_vmap_equals_python_loop():
    model = tiny_model(pooling="avg", avg_pool_scale=2.0)
    params = {"params": tiny_params()}
    layers = ("relu1_1", "relu3_1", "relu5_1")
    images = jnp.stack([random_image(seed) for seed in (3, 4, 5)])
    batched = jax.vmap(lambda x: model.apply(params, x, layers))(images)
    for name in layers:
        assert batched[name].shape[0] == 3
        for i in range(3):
            one = model.apply(params, images[i], layers)[name]
            assert_close_rel_max(batched[name][i], one, rtol=1e-5, atol=1e-12, name=f"{name}[{i}]")


def test_jit_equals_no_jit():
    model = tiny_model(first_padding="replicate")
    params = {"params": tiny_params()}
    layers = vgg.layer_names(TINY_BLOCKS)
    image = jnp.asarray(random_image())
    eager = model.apply(params, image, layers)
    jitted = jax.jit(model.apply, static_argnums=2)(params, image, layers)
    for name in layers:
        assert_close_rel_max(jitted[name], eager[name], rtol=1e-6, atol=1e-12, name=name)


# ----------------------------------------------------------------------------
# Structure that must not drift.


def _param_shapes(architecture):
    return jax.eval_shape(functools.partial(vgg.init_params, architecture), jax.random.key(0))


@pytest.mark.parametrize("architecture, count", [("vgg19", 20_024_384), ("vgg16", 14_714_688)])
def test_conv_parameter_count(architecture, count):
    shapes = _param_shapes(architecture)
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes)) == count


def test_vgg19_layer_names():
    assert vgg.layer_names(vgg.VGG19_BLOCKS) == VGG19_LAYERS


def test_vgg19_param_tree():
    shapes = _param_shapes("vgg19")
    names = vgg.conv_names(vgg.VGG19_BLOCKS)
    assert names == tuple(n for n in VGG19_LAYERS if n.startswith("conv"))
    assert set(shapes) == set(names) and len(shapes) == 16
    c_in = 3
    for name in names:
        c_out = vgg.VGG_WIDTHS[int(name[4]) - 1]
        assert set(shapes[name]) == {"kernel", "bias"}
        assert shapes[name]["kernel"].shape == (3, 3, c_in, c_out)
        assert shapes[name]["bias"].shape == (c_out,)
        c_in = c_out


# ----------------------------------------------------------------------------
# The layers argument.


def test_returns_exactly_the_layers_asked_for():
    model = tiny_model()
    params = {"params": tiny_params()}
    image = jnp.asarray(random_image())
    full = model.apply(params, image, vgg.layer_names(TINY_BLOCKS))
    for layers in (["relu1_1"], ["relu3_1", "conv1_1"], ["pool2", "relu5_2", "conv4_2"]):
        out = model.apply(params, image, layers)
        assert set(out) == set(layers)
        for name in layers:
            assert_close_rel_max(out[name], full[name], rtol=1e-6, atol=1e-12, name=name)


@pytest.mark.parametrize("layers", [["relu6_1"], ["relu1_1", "conv3_3"]])
def test_unknown_layer_raises_value_error_naming_it(layers):
    model = tiny_model()  # the tiny net has no conv3_3
    with pytest.raises(ValueError, match=layers[-1]):
        model.apply({"params": tiny_params()}, jnp.asarray(random_image()), layers)


@pytest.mark.parametrize("remat", [False, True], ids=["plain", "remat"])
@pytest.mark.parametrize("layers, convs", [(["relu1_1"], 1), (["relu3_1"], 5), (["pool1", "relu3_1"], 5), (["pool5"], 16)])
def test_stops_at_deepest_layer(layers, convs, remat):
    model = vgg.VGG19(remat=remat)
    image = jax.ShapeDtypeStruct((64, 64, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p, x: model.apply({"params": p}, x, layers))(_param_shapes("vgg19"), image)
    assert count_primitive(jaxpr, "conv_general_dilated") == convs


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
