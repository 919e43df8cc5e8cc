"""A plain PyTorch VGG feature extractor built from jaxstyle weights: the reference for parity tests.

Not a test file. It shares no code with `jaxstyle`: the preprocessing
constants, the layer order and the pooling are written out again here, in
PyTorch's NCHW/OIHW convention, so that a transposed kernel or a wrong
channel order in jaxstyle shows up as a mismatch.
torch is imported when `activations` is called, so importing this module
needs no torch; tests call ``pytest.importorskip("torch")`` first.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# Caffe (original VGG, Keras): BGR, 0-255, minus the mean pixel (B, G, R).
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
# torchvision: RGB in [0, 1], standardised.
_TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406])
_TORCHVISION_STD = np.array([0.229, 0.224, 0.225])
_BLOCKS = {"vgg19": (2, 2, 4, 4, 4), "vgg16": (2, 2, 3, 3, 3), "tiny": (2, 2, 2, 2, 2)}


def preprocess(image: np.ndarray, preprocessing: str) -> np.ndarray:
    """RGB in [0, 1], (h, w, 3) -> the network input in the weights' convention, float64 (h, w, 3)."""
    image = np.asarray(image, np.float64)
    if preprocessing == "caffe":
        return image[..., ::-1] * 255.0 - _CAFFE_MEAN_BGR
    if preprocessing == "torchvision":
        return (image - _TORCHVISION_MEAN) / _TORCHVISION_STD
    raise ValueError(f"unknown preprocessing {preprocessing!r}")


def layer_names(architecture: str) -> list[str]:
    """conv1_1, relu1_1, ..., pool1, conv2_1, ... in forward order."""
    names = []
    for b, n in enumerate(_BLOCKS[architecture], 1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return names


def activations(flat: Mapping[str, np.ndarray], architecture: str, preprocessing: str, image: np.ndarray,
                *, layers: Sequence[str] | None = None, pooling: str = "max", avg_pool_scale: float = 1.0,
                dtype: str = "float64") -> dict[str, np.ndarray]:
    """Activations of a torch VGG (Conv2d padding 1, ReLU, 2x2 pooling) with jaxstyle's weights.

    Args:
      flat: ``{"conv1_1/kernel": (3, 3, in, out) HWIO, "conv1_1/bias": (out,), ...}``
        (`jaxstyle.weights.flatten` of a parameter tree).
      architecture: "vgg19", "vgg16" or "tiny".
      preprocessing: "caffe" or "torchvision".
      image: RGB in [0, 1], (h, w, 3).
      layers: names to return (default: all); the pass stops at the deepest.
      pooling: "max" or "avg" (multiplied by ``avg_pool_scale``).
      dtype: torch dtype name for the computation; float64 makes it a
        reference for jaxstyle's float32.
    Returns:
      ``{name: (h', w', c) NumPy array}`` for each requested layer.
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    names = layer_names(architecture)
    layers = list(names) if layers is None else list(layers)
    deepest = max(names.index(name) for name in layers)
    x = torch.from_numpy(preprocess(image, preprocessing).transpose(2, 0, 1)[None].copy()).to(torch_dtype)
    out = {}
    with torch.no_grad():
        for name in names[: deepest + 1]:
            if name.startswith("conv"):
                kernel = np.asarray(flat[f"{name}/kernel"])
                conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], 3, padding=1).to(torch_dtype)
                conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))  # HWIO -> OIHW
                conv.bias.copy_(torch.from_numpy(np.asarray(flat[f"{name}/bias"])))
                x = conv(x)
            elif name.startswith("relu"):
                x = torch.relu(x)
            elif pooling == "max":
                x = torch.nn.functional.max_pool2d(x, 2, 2)
            else:
                x = torch.nn.functional.avg_pool2d(x, 2, 2) * avg_pool_scale
            if name in layers:
                out[name] = x[0].permute(1, 2, 0).numpy().copy()
    return out
