"""`jaxstyle.sharding`: the three layouts of one chunk give the same pictures.

Several devices need JAX started with fake CPU devices, so the comparisons run
in a subprocess (`tests/sharded_check.py`, at tolerances measured for each
problem) and the facts about how arrays were split come back as JSON.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxstyle import cli, images, sharding
from processes import JAXSTYLE, cpu_env
from synthetic import photo

LEVEL = 1 / 255  # one step of an 8-bit PNG
HERE = pathlib.Path(__file__).parent


@pytest.fixture
def inputs(tmp_path) -> pathlib.Path:
    d = tmp_path / "photos"
    images.save_image(d / "a.png", photo(30, 40, seed=1))
    images.save_image(tmp_path / "style.png", photo(30, 30, seed=9)[::-1])
    return d


@pytest.fixture(scope="module")
def sharded_facts() -> dict:
    """Run tests/sharded_check.py on 4 fake CPU devices; its own assert_allclose checks must pass."""
    run = subprocess.run([sys.executable, str(HERE / "sharded_check.py")], capture_output=True, text=True,
                         env=cpu_env(4), timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_sharded_batch_equals_unsharded_and_is_split_over_4_devices(sharded_facts):
    assert sharded_facts["devices"] == 4
    # 6 images padded to 8, 2 per device.
    assert sharded_facts["batch"] == {"spec": ["batch"], "devices": 4, "shard_shapes": [[2, 24, 32, 3]]}
    assert sharded_facts["sweep"] == {"spec": ["batch"], "devices": 4, "shard_shapes": [[1, 24, 32, 3]]}


def test_a_window_of_video_frames_is_split_over_4_devices_and_equals_one_device(sharded_facts):
    # 6 frames padded to 8, 2 per device, in every pass (the comparison ran in the subprocess).
    facts = {k: sharded_facts["video"][k] for k in ("spec", "devices", "shard_shapes")}
    assert facts == {"spec": ["batch"], "devices": 4, "shard_shapes": [[2, 40, 48, 3]]}


def test_a_training_step_is_split_over_4_devices_and_equals_one_device(sharded_facts):
    """The batch of photos is split, the network's parameters replicated (the comparison ran in the subprocess)."""
    facts = sharded_facts["train"]
    assert facts["photos"] == {"spec": ["batch"], "devices": 4, "shard_shapes": [[1, 30, 30, 3]]}
    assert facts["params"]["spec"] == [] and facts["params"]["devices"] == 4
    assert facts["grad_atol"] < 1e-3 * facts["grad_scale"]  # the gradient comparison was a tight one
    assert facts["max_abs_diff"] <= facts["atol"]


def test_image_split_by_rows_equals_unsharded(sharded_facts):
    # The assert_allclose checks ran in the subprocess; here, how the arrays were split.
    for key in ("rows_adam_64", "rows_lbfgs_64"):  # 64 rows: 16 per device (a batch of one image)
        facts = {k: sharded_facts[key][k] for k in ("spec", "devices", "shard_shapes")}
        assert facts == {"spec": [None, "rows"], "devices": 4, "shard_shapes": [[1, 16, 48, 3]]}
    # 40 rows: 2 devices, so that each holds 2**4 rows (relu5_1 is 4 poolings deep).
    assert sharded_facts["rows_adam_40"]["devices"] == 2
    assert sharded_facts["rows_adam_40"]["shard_shapes"] == [[1, 20, 30, 3]]
    # 70 rows do not split evenly: the iterate comes back whole, the program still splits the work.
    assert sharded_facts["rows_adam_70"]["spec"] == []
    temp = sharded_facts["rows_temp_bytes"]
    assert temp["4"] < 0.5 * temp["1"]  # per-device scratch memory of a step: activations are split


def test_shard_image_option_of_the_console_script(inputs, tiny_weights, tmp_path):
    args = [str(inputs / "a.png"), "--style", str(inputs.parent / "style.png"), "--weights", str(tiny_weights),
            "--size", "64", "--steps", "10", "--quiet"]  # 48 rows: 3 devices of 16 rows (relu5_1)
    sharded = subprocess.run([str(JAXSTYLE), "stylize", *args, "-o", str(tmp_path / "rows.png"), "--shard-image"],
                             capture_output=True, text=True, env=cpu_env(4), timeout=300)
    assert sharded.returncode == 0, sharded.stderr
    assert cli.main(["stylize", *args, "-o", str(tmp_path / "plain.png")]) == 0
    np.testing.assert_allclose(images.load_image(tmp_path / "rows.png"), images.load_image(tmp_path / "plain.png"),
                               rtol=0, atol=LEVEL + 1e-6)


def test_items_one_after_another_equal_items_vmapped():
    """`for_each_item`: L-BFGS's items run sequentially (no vmapped line search), with the same values."""
    def fn(x, w):
        return jnp.sin(x) * w, jnp.sum(x * x)

    xs, ws = jnp.linspace(0, 1, 24).reshape(4, 2, 3), jnp.arange(4.0)[:, None, None]
    sequential = sharding.for_each_item(fn, (xs, ws), sequential=True)
    vmapped = sharding.for_each_item(fn, (xs, ws))
    for a, b in zip(jax.tree.leaves(sequential), jax.tree.leaves(vmapped), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    one = sharding.for_each_item(fn, (xs[:1], ws[:1]))  # a single item runs without a batch axis
    np.testing.assert_allclose(one[0], vmapped[0][:1], rtol=1e-6)
