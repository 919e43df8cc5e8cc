"""Synthetic test images shared by the test files."""

import numpy as np


def photo(h=30, w=40, seed=1):
    """A content image: smooth colour gradients with texture and noise, every colour direction present."""
    y, x = np.mgrid[0:h, 0:w]
    im = np.stack([x / (w - 1), y / (h - 1), 0.5 + 0.3 * np.sin(x / 5) * np.cos(y / 4)], -1)
    return np.clip(im + np.random.default_rng(seed).normal(0, 0.05, im.shape), 0, 1).astype(np.float32)
