"""The compiled chunk of steps of one image, lowered but not run, for the tests of its text and memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxstyle import sharding, step


def lower_chunk(model, params, image, targets, weights, optimizer: str = "adam"):
    """One step of one image (a batch of one, as every run), lowered for the single-device layout."""
    one = lambda tree: jax.tree.map(lambda x: x[None], tree)  # noqa: E731
    return sharding.single().lower(model, params, image[None], one(step.init_state(optimizer, image, 0.02)), None,
                                   targets, one(weights), jnp.int32(1), optimizer=optimizer, ema_decay=0.0,
                                   axes=sharding.ItemAxes(content=None, style=None))
