"""Tolerances for comparing two float32 optimisations that differ only in rounding.

A batched, sharded or vmapped program sums in another order than a single
run, so its values differ by float32 rounding, about 1e-7 relative per
operation. An optimisation then carries such differences forward, and how far
depends on the problem: Adam near a pixel whose gradient is close to its
``eps``, or L-BFGS's line search, can turn them into visible steps. A fixed
tolerance would pass or fail with the machine (BLAS, thread count).

`rounding_atol` measures it instead: it runs the reference again from a start
perturbed by ``eps`` = 1e-6 (ten times float32's resolution at 1.0, more
than any rounding difference of the start) and takes how far that moved the
result, times a safety factor, as the tolerance. A well-conditioned
comparison keeps a tolerance near ``floor``; an ill-conditioned one gets a
tolerance that says so, instead of a flaky test.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

EPS = 1e-6
FACTOR = 4.0
FLOOR = 1e-6


def amplification(run: Callable[[np.ndarray], np.ndarray], start: np.ndarray, *, eps: float = EPS,
                  seed: int = 0) -> float:
    """How far ``run`` (starting image -> result) carries a uniform perturbation of ``start`` of size ``eps``."""
    start = np.asarray(start, np.float32)
    noise = np.random.default_rng(seed).uniform(-eps, eps, start.shape).astype(np.float32)
    return float(np.abs(np.asarray(run(np.clip(start + noise, 0, 1))) - np.asarray(run(start))).max())


def rounding_atol(run: Callable[[np.ndarray], np.ndarray], start: np.ndarray, *, factor: float = FACTOR,
                  floor: float = FLOOR) -> float:
    """The absolute tolerance for a result of ``run`` computed with other rounding: ``factor`` times the
    `amplification` of a 1e-6 perturbation, and at least ``floor``."""
    return max(floor, factor * amplification(run, start))


def single_run_start(content: np.ndarray, config) -> np.ndarray:
    """The starting image of `optimize.stylize` of ``content`` with ``config`` (at its first scale)."""
    from jaxstyle import color, plan, step

    hw = plan.output_shape(np.shape(content), plan.scale_sizes(config)[0])
    prepared = color.prepare(config.preserve_colors, step.resize(content, hw), [])[0]
    return np.asarray(step.initial_image(config.init, prepared, config.seed))


def assert_like_single_run(result: np.ndarray, content: np.ndarray, style, network, config) -> float:
    """``result`` (an item of a batch, a sweep, a sharded run) equals `optimize.stylize` run alone, up to
    rounding as far as this problem carries it (`rounding_atol`). Returns the tolerance used."""
    from jaxstyle import optimize

    start = single_run_start(content, config)

    def run(init):
        return optimize.stylize(content, style, network, config, init=init)

    atol = rounding_atol(run, start)
    np.testing.assert_allclose(result, run(start), rtol=0, atol=atol)
    return atol
