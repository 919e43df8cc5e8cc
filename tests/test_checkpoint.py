"""`jaxstyle.checkpoint`: a run saved and loaded is the same run, and a file that does not fit is refused.

Resuming through the command line (bit for bit the uninterrupted result, for
Adam, L-BFGS, coarse-to-fine and averaging; refusals of other settings,
inputs and weights) is tested in tests/test_report.py.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxstyle import checkpoint, images, optimize, step, weights
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError
from synthetic import photo

SIZE, OUT_HW = 32, (24, 32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("checkpoint_inputs")
    paths = {"content": d / "photo.png", "style": d / "painting.png"}
    for seed, key in enumerate(paths, 1):
        images.save_image(paths[key], photo(30, 40, seed=seed))
    return paths


def test_checkpoint_round_trip_is_exact_in_float32(files, tiny_weights, tmp_path):
    """The library path: resume from a saved and reloaded checkpoint, compared in float32 with atol 0."""
    params, meta = weights.load(tiny_weights)
    network = optimize.Network(weights.model_for(meta), params)
    content, style = images.load_image(files["content"]), images.load_image(files["style"])
    config = StylizeConfig(size=SIZE, steps=30, optimizer="lbfgs", ema_decay=0.5)
    run = checkpoint.run_record(config, [("content", files["content"]), ("style 1", files["style"])],
                                meta["params_sha256"])
    reports = []
    whole = optimize.stylize(content, style, network, config, callback=reports.append)
    path = tmp_path / "run.checkpoint.npz"
    checkpoint.save(path, reports[0].checkpoint, run, reports[0].losses)
    state, history = checkpoint.load(path, run, config, content.shape)
    np.testing.assert_array_equal(history, reports[0].losses)
    saved = reports[0].checkpoint
    assert (state.scale, state.step) == (saved.scale, saved.step) == (0, 10)
    for a, b in zip(jax.tree.leaves((state.images, state.states, state.emas)),
                    jax.tree.leaves((saved.images, saved.states, saved.emas)), strict=True):
        np.testing.assert_array_equal(a, b)
    resumed = optimize.stylize(content, style, network, config, resume=state)
    np.testing.assert_array_equal(resumed, whole)


def test_checkpoint_shapes_are_checked(files, tiny_weights, tmp_path):
    """A checkpoint whose arrays do not fit the run (here: another content size) is refused."""
    config = StylizeConfig(size=SIZE, steps=40)
    run = checkpoint.run_record(config, [("content", files["content"])], "0" * 64)
    image = np.full((1, *OUT_HW, 3), 0.5, np.float32)
    state = optimize.Checkpoint(0, 10, image, jax.vmap(lambda x: step.init_state("adam", x, 0.02))(image), None)
    path = tmp_path / "c.npz"
    checkpoint.save(path, state, run, np.ones((1, 10)))
    checkpoint.load(path, run, config, (30, 40, 3))  # fits
    with pytest.raises(UsageError, match=r"images float32 \(1, 24, 32, 3\), expected finite float32 \(1, 32, 32, 3\)"):
        checkpoint.load(path, run, config, (40, 40, 3))
    with pytest.raises(UsageError, match=r"expected finite float32 \(2, 24, 32, 3\)"):
        checkpoint.load(path, run, config, (30, 40, 3), items=2)
    checkpoint.save(path, state, run, np.ones((1, 9)))
    with pytest.raises(UsageError, match=r"history of shape \(1, 9\) for 1 item\(s\) and 10 steps done"):
        checkpoint.load(path, run, config, (30, 40, 3))
    with np.load(path) as z:  # drop one optimiser leaf
        arrays = {k: z[k] for k in z.files if k != "state/8"}
    np.savez(path, **arrays)
    with pytest.raises(UsageError, match="8 state arrays, expected 9"):
        checkpoint.load(path, run, config, (30, 40, 3))
