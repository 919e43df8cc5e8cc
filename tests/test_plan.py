"""`jaxstyle.plan`: sizes, scales, checks, sweep grids and strip geometry, all without JAX."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from jaxstyle import plan
from jaxstyle.config import STYLE_LAYERS, StylizeConfig
from jaxstyle.errors import UsageError

VGG19 = plan.VGG19_BLOCKS
TINY = plan.TINY_BLOCKS


def test_the_planning_and_command_modules_import_no_jax():
    modules = "plan memory outputs config images batch_io weights convert report commands cli"
    code = ("import sys\n" + "".join(f"import jaxstyle.{m}\n" for m in modules.split())
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_a_bad_command_line_is_refused_before_jax_starts(tmp_path):
    code = ("import sys\nfrom jaxstyle import cli\n"
            "code = cli.main(['stylize', 'missing.jpg', '--style', 'missing.png', '-o', 'out.png'])\n"
            "print(code, 'jax' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.stdout.strip() == "2 False", done.stdout + done.stderr
    assert "missing.png' does not exist" in done.stderr


def test_output_shape_and_the_coarse_to_fine_schedule():
    assert plan.output_shape((300, 451, 3), 384) == (255, 384)
    assert plan.output_shape((2000, 40), 64) == (64, 1)
    assert plan.scale_sizes(StylizeConfig(size=384)) == (384,)
    assert plan.scale_sizes(StylizeConfig(size=512, multiscale=True)) == (128, 181, 256, 362, 512)
    assert plan.scale_sizes(StylizeConfig(size=512, multiscale=True, scales=(300, 100, 300))) == (100, 300, 512)
    assert plan.scale_sizes(StylizeConfig(size=256, scales=(64, 128))) == (64, 128, 256)  # scales alone suffice


# ---------------------------------------------------------------- the schedule: sizes and steps per scale

@pytest.mark.parametrize("kwargs, sizes, steps", [
    (dict(size=1024), (1024,), (300,)),  # up to 1024 px: one scale
    (dict(size=1025, steps=100), (512, 1025), (100, 25)),  # above: from at least 512 px, doubling
    (dict(size=2048), (512, 1024, 2048), (300, 75, 19)),  # steps fall with the pixels: each scale costs as much
    (dict(size=1500, steps=40), (750, 1500), (40, 10)),
    (dict(size=4096, steps=10), (512, 1024, 2048, 4096), (10, 2, 1, 1)),  # at least one step per scale
    (dict(size=2048, scale_steps=(300, 200, 100, 50)), (256, 512, 1024, 2048), (300, 200, 100, 50)),
    (dict(size=2048, scale_steps=(60,)), (2048,), (60,)),  # one number: single scale, at any size
    (dict(size=512, steps=30, scales=(256,)), (256, 512), (30, 8)),
    (dict(size=512, steps=30, scales=(256,), scale_steps=(30, 30)), (256, 512), (30, 30)),
    (dict(size=362, multiscale=True, steps=64), (128, 181, 256, 362), (64, 32, 16, 8)),
])
def test_steps_per_scale_fall_as_the_scale_grows_unless_given(kwargs, sizes, steps):
    config = StylizeConfig(**kwargs)
    assert plan.scale_sizes(config) == sizes
    assert plan.scale_steps(config) == steps
    assert plan.total_steps(config) == sum(steps)
    assert [plan.steps_before(config, k) for k in range(len(sizes))] == [sum(steps[:k]) for k in range(len(sizes))]


def test_the_style_image_follows_style_scale_at_every_scale():
    config = StylizeConfig(size=2048, style_scale=0.5)
    assert [plan.style_size(config, s) for s in plan.scale_sizes(config)] == [256, 512, 1024]


@pytest.mark.parametrize("kwargs, problem", [
    (dict(size=2048, scales=(512, 1024), scale_steps=(300, 100)), "`scale_steps` must give one step count per scale "
     "(512, 1024, 2048 px), got 300,100"),
    (dict(size=512, scales=(256,), scale_steps=(30,)), "one step count per scale (256, 512 px), got 30"),
])
def test_a_step_count_per_scale_is_required(kwargs, problem):
    with pytest.raises(UsageError, match=re.escape(problem)):
        plan.check_sizes(StylizeConfig(**kwargs), VGG19, (300, 400, 3), [(300, 400, 3)])


def test_scale_steps_must_be_positive():
    with pytest.raises(UsageError, match="`scale_steps` must be positive, got 300,0"):
        StylizeConfig(size=1024, scale_steps=(300, 0))


@pytest.mark.parametrize("init_side, sizes, steps", [
    (256, (512, 1024, 2048), (300, 75, 19)),  # smaller than the first scale: the whole run
    (512, (1024, 2048), (75, 19)),  # a finished 512 px output: on at 1024 px
    (700, (1024, 2048), (75, 19)),  # between scales: from the next, resized to it
    (1024, (2048,), (19,)),
    (4000, (2048,), (19,)),  # larger than the output: the last scale
])
def test_a_smaller_finished_output_continues_at_the_next_scale(init_side, sizes, steps):
    config = StylizeConfig(size=2048)
    continued = plan.continuing(config, (init_side * 2 // 3, init_side, 3))
    assert (plan.scale_sizes(continued), plan.scale_steps(continued)) == (sizes, steps)
    assert plan.continuing(continued, (init_side * 2 // 3, init_side)) == continued  # idempotent
    assert plan.continuing(StylizeConfig(size=384), (100, 100)) == StylizeConfig(size=384)  # single scale: as is


@pytest.mark.parametrize("shape", [(40, 2000), (2000, 40), (30, 97)])
def test_a_size_too_small_for_the_network_names_the_size_that_works(shape):
    config = StylizeConfig(size=16)
    with pytest.raises(UsageError, match=r"raise `size` to at least (\d+)$") as info:
        plan.check_sizes(config, VGG19, shape, [])
    works = int(info.value.args[0].rsplit("at least ", 1)[1])
    plan.check_sizes(config.replace(size=works), VGG19, shape, [])  # the advice holds ...
    with pytest.raises(UsageError):
        plan.check_sizes(config.replace(size=works - 1), VGG19, shape, [])  # ... and is the smallest


def test_a_style_scale_too_small_names_the_scale_that_works():
    config = StylizeConfig(size=64, style_scale=0.1)
    with pytest.raises(UsageError, match=r"style image 1 is 6x4 pixels.*raise `style_scale` to at least ([\d.]+)$") \
            as info:
        plan.check_sizes(config, VGG19, (48, 64), [(300, 400)])
    works = float(info.value.args[0].rsplit("at least ", 1)[1])
    plan.check_sizes(config.replace(style_scale=works), VGG19, (48, 64), [(300, 400)])
    # Shallower layers need fewer pixels: relu3_1 comes after two poolings.
    plan.check_sizes(config.replace(style_layers=("relu1_1", "relu3_1"), content_layers=("relu3_1",),
                                    style_scale=0.08), VGG19, (48, 64), [(300, 400)])


@pytest.mark.parametrize("grid, words", [
    ({}, "the sweep grid is empty"),
    ({"size": [32, 64]}, "cannot sweep `size`"),
    ({"lr": []}, "`lr` has no values"),
    ({"tv_weight": [1.0, 1.0]}, "`tv_weight` lists the value 1.0 twice"),
    ({"style_weight": [1e4, 10000]}, "`style_weight` lists the value 10000 twice"),
    ({"seed": [0, 1]}, "sweeping `seed` changes nothing"),
    ({"tv_weight": [1, -1]}, "`tv_weight` must be zero or positive, got -1"),
    ({"lr": [0.1, float("nan")]}, "`lr` must be a finite number"),
])
def test_a_grid_that_cannot_run_is_refused(grid, words):
    with pytest.raises(UsageError, match=words):
        plan.check_grid(StylizeConfig(), grid)


def test_grid_points_and_programs():
    assert plan.grid_points({"a": [1, 2], "b": [3, 4]}) == [{"a": 1, "b": 3}, {"a": 1, "b": 4}, {"a": 2, "b": 3},
                                                            {"a": 2, "b": 4}]
    assert plan.programs(5, None) == [range(0, 5)]
    assert plan.programs(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert plan.program_size(5, 2) == 2 and plan.program_size(5, 3, devices=4) == 4
    assert plan.program_size(2, 8) == 2
    with pytest.raises(UsageError, match="`batch_size` must be at least 1"):
        plan.program_size(5, 0)


def test_layer_names_and_checks():
    assert plan.layer_names((1, 1)) == ("conv1_1", "relu1_1", "pool1", "conv2_1", "relu2_1", "pool2")
    assert plan.deepest(VGG19, ("relu4_2", "relu1_1", "relu5_1")) == "relu5_1"
    assert plan.poolings_before(VGG19, "relu5_1") == 4 and plan.poolings_before(VGG19, "pool5") == 5
    with pytest.raises(UsageError, match="unknown layer.*relu9_9"):
        plan.check_layers(StylizeConfig(content_layers=("relu9_9",)), VGG19)
    with pytest.raises(UsageError, match="`style_blend` has 2 weights but 1 style image was given"):
        plan.check_styles(StylizeConfig(style_blend=(1, 2)), 1)
    with pytest.raises(UsageError, match="1 mask pairs for 2 style images"):
        plan.check_styles(StylizeConfig(), 2, 1)
    with pytest.raises(UsageError, match="`remat` and `shard_image`"):
        plan.check_layout(StylizeConfig(remat=True), rows=True)


def test_content_masks_must_cover_the_image():
    import numpy as np

    left = np.zeros((20, 30))
    left[:, :15] = 1
    plan.check_mask_coverage([left, 1 - left])
    with pytest.raises(UsageError, match="leave part of the image without any style"):
        plan.check_mask_coverage([left, left[::2, ::2]])


# ---------------------------------------------------------------- strip geometry and FLOPs


def test_halo_of_vgg19_covers_the_receptive_field_of_relu5_1():
    # conv: 2*1 + 2*2 + 4*4 + 4*8 + 1*16 = 70 rows, pool: 1 + 2 + 4 + 8 = 15; 85 rounded to a multiple of 16.
    assert plan.halo_rows(VGG19, STYLE_LAYERS) == 96
    assert plan.row_scale(VGG19, "relu5_1") == 16
    assert plan.row_scale(VGG19, "pool1") == 2
    assert plan.halo_rows(VGG19, ("relu1_1",)) == 1
    assert plan.strip_rows(4096, VGG19, STYLE_LAYERS, pixels=2**21) == 512
    # The stages of --remat: up to pool2 (conv 1 + 1 + 2 + 2, pool 1 + 2 = 9 rows, rounded to 4), then from
    # pool2's activation to pool3 (4 convolutions and a pooling, 5 rows of pool2, rounded to 2).
    assert plan.halo_rows(VGG19, ("pool2",)) == 12
    assert plan.halo_rows(VGG19, ("pool3",), start="pool2") == 6
    assert plan.row_scale(VGG19, "relu4_1", start="pool2") == 2


# ---------------------------------------------------------------- FLOPs

def test_scale_work_counts_each_scales_steps_and_flops_by_hand():
    blocks, widths = plan.TINY_BLOCKS, plan.TINY_WIDTHS
    config = StylizeConfig(size=32, steps=5, multiscale=True, scales=(16,), content_layers=(),
                           style_layers=("relu1_1",))
    # A 30x40 photo: 12x16 then 24x32; conv1_1 (3 -> 4 channels), forward and input gradient.
    assert plan.scale_work(config, (30, 40, 3), blocks, widths) == (
        (5, 2 * 2 * 12 * 16 * 9 * 3 * 4), (1, 2 * 2 * 24 * 32 * 9 * 3 * 4))  # 5 steps / 4 times the pixels


def test_conv_flops_by_hand():
    # tiny: conv1_1 3->4 and conv1_2 4->4 at 8x6, pool, conv2_1 4->6 and conv2_2 6->6 at 4x3.
    assert plan.conv_flops(8, 6, "conv1_1", plan.TINY_BLOCKS, plan.TINY_WIDTHS) == 2 * 8 * 6 * 9 * 3 * 4
    assert plan.conv_flops(8, 6, "relu2_1", plan.TINY_BLOCKS, plan.TINY_WIDTHS) == \
        2 * 9 * (8 * 6 * 3 * 4 + 8 * 6 * 4 * 4 + 4 * 3 * 4 * 6)
    assert plan.conv_flops(9, 7, "pool2", plan.TINY_BLOCKS, plan.TINY_WIDTHS) == \
        2 * 9 * (9 * 7 * 3 * 4 + 9 * 7 * 4 * 4 + 4 * 3 * 4 * 6 + 4 * 3 * 6 * 6)  # odd sizes: pooling rounds down
    # VGG19 to relu5_1 at 224 x 224: the well-known ~19.6 GFLOPs of the full net minus the last 3 convs of block 5.
    assert plan.conv_flops(224, 224, "relu5_1") == 2 * 9 * sum(
        h * h * cin * cout for h, cin, cout in [(224, 3, 64), (224, 64, 64), (112, 64, 128), (112, 128, 128),
                                                (56, 128, 256), *[(56, 256, 256)] * 3, (28, 256, 512),
                                                *[(28, 512, 512)] * 3, (14, 512, 512)])
    with pytest.raises(ValueError, match="relu9_9"):
        plan.conv_flops(8, 8, "relu9_9")
