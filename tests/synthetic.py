"""Synthetic test images shared by the test files."""

import numpy as np


def photo(h=30, w=40, seed=1):
    """A content image: smooth colour gradients with texture and noise, every colour direction present."""
    y, x = np.mgrid[0:h, 0:w]
    im = np.stack([x / (w - 1), y / (h - 1), 0.5 + 0.3 * np.sin(x / 5) * np.cos(y / 4)], -1)
    return np.clip(im + np.random.default_rng(seed).normal(0, 0.05, im.shape), 0, 1).astype(np.float32)


def grating(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth image with texture: gradients, a sine grating and noise, RGB in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    image = np.stack([xx, yy, 0.5 + 0.4 * np.sin(12 * xx + 5 * yy)], -1) + 0.1 * rng.standard_normal((h, w, 3))
    return np.clip(image, 0, 1).astype(np.float32)
