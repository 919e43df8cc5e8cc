"""An independent float64 NumPy reference of the VGG forward pass, for tests.

Written plainly and without JAX, so that `jaxstyle.vgg` can be checked against
it layer by layer: a 3x3 convolution is a sum over the nine kernel taps of a
shifted image times a (in, out) matrix, pooling is a reshape and a max or mean.
"""

from __future__ import annotations

import numpy as np

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406])
TORCHVISION_STD = np.array([0.229, 0.224, 0.225])


def preprocess(image: np.ndarray, preprocessing: str) -> np.ndarray:
    """RGB in [0, 1], (h, w, 3) -> the network input, (h, w, 3) float64."""
    image = np.asarray(image, np.float64)
    if preprocessing == "caffe":
        bgr = image[:, :, [2, 1, 0]]
        return bgr * 255.0 - CAFFE_MEAN_BGR
    if preprocessing == "torchvision":
        return (image - TORCHVISION_MEAN) / TORCHVISION_STD
    raise ValueError(f"unknown preprocessing {preprocessing!r}")


def conv3x3(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, padding: str) -> np.ndarray:
    """3x3 stride-1 cross-correlation with a one-pixel border, plus bias.

    out[y, x, o] = bias[o] + sum_{dy, dx, i} pad(x)[y + dy, x + dx, i] * kernel[dy, dx, i, o]

    Args:
      x: (h, w, in).
      kernel: (3, 3, in, out), Flax/HWIO layout.
      bias: (out,).
      padding: "zeros" or "replicate" (edge pixels repeated).
    Returns:
      (h, w, out), same spatial size as ``x``.
    """
    mode = {"zeros": "constant", "replicate": "edge"}[padding]
    h, w, _ = x.shape
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode=mode)
    out = np.zeros((h, w, kernel.shape[3])) + bias
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("hwi,io->hwo", padded[dy : dy + h, dx : dx + w], kernel[dy, dx])
    return out


def pool2x2(x: np.ndarray, pooling: str, avg_pool_scale: float = 1.0) -> np.ndarray:
    """2x2 stride-2 pooling; an odd last row or column is dropped (floor)."""
    h, w, c = x.shape
    windows = x[: 2 * (h // 2), : 2 * (w // 2)].reshape(h // 2, 2, w // 2, 2, c)
    if pooling == "max":
        return windows.max(axis=(1, 3))
    if pooling == "avg":
        return windows.mean(axis=(1, 3)) * avg_pool_scale
    raise ValueError(f"unknown pooling {pooling!r}")


def vgg_features(
    params: dict,
    image: np.ndarray,
    *,
    blocks: tuple[int, ...],
    pooling: str = "max",
    avg_pool_scale: float = 1.0,
    first_padding: str = "zeros",
    preprocessing: str = "caffe",
) -> dict[str, np.ndarray]:
    """Every activation of a VGG, in float64.

    Args:
      params: {"conv1_1": {"kernel": (3, 3, in, out), "bias": (out,)}, ...};
        any array type, converted to float64.
      image: RGB in [0, 1], (h, w, 3).
      blocks: convolutions per block, e.g. (2, 2, 4, 4, 4) for VGG19.
    Returns:
      {"conv1_1": (h, w, c), "relu1_1": ..., "pool1": ..., ...} for every layer.
    """
    x = preprocess(image, preprocessing)
    acts = {}
    for b, n in enumerate(blocks, 1):
        for i in range(1, n + 1):
            name = f"conv{b}_{i}"
            kernel = np.asarray(params[name]["kernel"], np.float64)
            bias = np.asarray(params[name]["bias"], np.float64)
            padding = first_padding if (b, i) == (1, 1) else "zeros"
            x = conv3x3(x, kernel, bias, padding)
            acts[name] = x
            x = np.maximum(x, 0.0)
            acts[f"relu{b}_{i}"] = x
        x = pool2x2(x, pooling, avg_pool_scale)
        acts[f"pool{b}"] = x
    return acts
