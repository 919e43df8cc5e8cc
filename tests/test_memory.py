"""`jaxstyle.memory`, and the memory of a compiled step as XLA reports it.

The estimate that refuses sizes beyond the machine's memory is checked against
measured peaks, and the compiled step's temporary memory (``memory_analysis``,
exact and cheap: nothing is run) against what the XLA:CPU flags and ``remat``
promise: below a quarter of the plain step at 1024 px with remat.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from jaxstyle import memory, runtime, step, vgg, weights
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError
from lowering import lower_chunk
from synthetic import grating as _photo


def _step_temp_bytes(model, params, size: int, compiler_options=None, height: int | None = None) -> int:
    """Temporary memory of the compiled chunk of optimisation steps (nothing is run)."""
    content = jnp.asarray(_photo(height or size, size))
    config = StylizeConfig(size=size)
    targets = step.compute_targets(model, params, content, (content,), jnp.ones(1),
                                       content_layers=config.content_layers, style_layers=config.style_layers)
    image = step.initial_image("content", content, 0)
    lowered = lower_chunk(model, params, image, targets, step.loss_weights(config, targets))
    return lowered.compile(compiler_options).memory_analysis().temp_size_in_bytes


def _scheduler(flags: tuple[str, ...]) -> dict:
    """`runtime` flags as per-program compiler options (the test process has its own XLA_FLAGS)."""
    return dict(f.lstrip("-").split("=") for f in flags)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU scheduler and memory figures")
def test_the_default_cpu_flags_and_remat_lower_the_temporary_memory_of_a_step(real_weights):
    params, meta = real_weights
    model = weights.model_for(meta)
    default = _step_temp_bytes(model, params, 256)
    ours = _step_temp_bytes(model, params, 256, _scheduler(runtime.DEFAULT_CPU_FLAGS))
    remat = _step_temp_bytes(model.clone(remat=True), params, 256, _scheduler(runtime.DEFAULT_CPU_FLAGS))
    # Measured: 192, 128 and 64 MiB (BENCHMARKS.md has 512 and 1024 px).
    assert ours < 0.8 * default
    assert remat < 0.7 * ours


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU scheduler and memory figures")
def test_remat_at_1024_px_needs_under_half_the_temporary_memory(real_weights):
    """The issue's target, on XLA's exact figures (BENCHMARKS.md has the whole process's peak, 0.47-0.49)."""
    params, meta = real_weights
    model = weights.model_for(meta)
    plain = _step_temp_bytes(model, params, 1024, _scheduler(runtime.DEFAULT_CPU_FLAGS), height=681)
    low = _scheduler(runtime.DEFAULT_CPU_FLAGS + runtime.LOW_MEMORY_CPU_FLAGS)
    remat = _step_temp_bytes(model.clone(remat=True), params, 1024, low, height=681)
    # Measured: 1300 and 205 MiB (the bundled photo's 681 x 1024).
    assert remat < 0.25 * plain


# ---------------------------------------------------------------- the estimate

def test_memory_estimate_counts_the_activations_and_advises_a_size_that_fits():
    blocks, widths = vgg.ARCHITECTURES["tiny"]  # widths 4, 6, 8, ...
    # 32x32: conv1_1, relu1_1, conv1_2, relu1_2 (4 channels), pool1 (16x16), conv2_1, relu2_1 (6 channels at 16x16).
    assert memory.activation_elements(blocks, widths, (32, 32), "relu2_1") == 4 * 4 * 1024 + 4 * 256 + 2 * 6 * 256
    vgg19 = vgg.ARCHITECTURES["vgg19"]
    config = StylizeConfig(size=384)
    # Measured (scripts/measure_memory.py, the command line's XLA flags): 933 MiB (Adam) and 956 MiB (L-BFGS)
    # at 384x255 on XLA:CPU; the estimate's stated margin is 1.1-1.5 times.
    adam = memory.peak_bytes(config, (300, 451, 3), *vgg19) / 2**20
    lbfgs = memory.peak_bytes(config.replace(optimizer="lbfgs"), (300, 451, 3), *vgg19) / 2**20
    assert 933 <= adam <= 1.5 * 933 and 956 <= lbfgs <= 1.5 * 956
    # With --style-scale 3 the style image's forward pass (600x469 painting at 1152 px) dominates: 2240 MiB.
    style = memory.peak_bytes(config.replace(style_scale=3.0), (300, 451, 3), *vgg19, [(469, 600, 3)]) / 2**20
    assert 2240 <= style <= 1.3 * 2240
    available = 3 * 2**30
    with pytest.raises(UsageError, match=r"use `size` (\d+) or less") as info:
        memory.check_memory(config.replace(size=4000), (300, 451, 3), *vgg19, available=available)
    fits = int(info.value.args[0].split("use `size` ")[1].split()[0])
    assert memory.peak_bytes(config.replace(size=fits), (300, 451, 3), *vgg19) <= available
    assert memory.peak_bytes(config.replace(size=fits + 1), (300, 451, 3), *vgg19) > available
    memory.check_memory(config.replace(size=fits), (300, 451, 3), *vgg19, available=available)
    # The advice names the larger size that fits with --remat, whose estimate is below the plain one.
    remat_fits = int(info.value.args[0].split("with `remat`, `size` ")[1].split()[0])
    assert remat_fits > fits
    assert memory.peak_bytes(config.replace(size=remat_fits, remat=True), (300, 451, 3), *vgg19) <= available


def test_the_remat_memory_estimate_covers_measured_runs():
    vgg19 = vgg.ARCHITECTURES["vgg19"]
    # Measured (scripts/measure_memory.py --remat, peak RSS MiB): the estimate is above each, and at
    # large sizes the strips keep it far below the plain run's estimate.
    for size, measured in ((384, 765), (1024, 1087), (2048, 1921)):
        config = StylizeConfig(size=size, remat=True)
        estimate = memory.peak_bytes(config, (300, 451, 3), *vgg19, [(469, 600, 3)]) / 2**20
        assert measured <= estimate <= 2 * measured, size
        if size >= 1024:  # at 384 px one strip covers most of the image
            assert estimate < 0.6 * memory.peak_bytes(config.replace(remat=False), (300, 451, 3), *vgg19) / 2**20


# ---------------------------------------------------------------- the planner

VGG19 = vgg.ARCHITECTURES["vgg19"]
PHOTO, PAINTING = (300, 451, 3), (469, 600, 3)


def _estimate(config: StylizeConfig) -> int:
    return memory.peak_bytes(config, PHOTO, *VGG19, [PAINTING])


def _plan(config: StylizeConfig, budget: int | None) -> memory.MemoryPlan:
    return memory.plan_memory(config, PHOTO, *VGG19, [PAINTING], budget=budget)


def test_the_planner_runs_the_whole_image_when_it_fits():
    config = StylizeConfig(size=1024)
    chosen = _plan(config, _estimate(config))
    assert chosen.config == config and chosen.estimate == _estimate(config)
    assert _plan(config, None).config == config  # no budget known: as configured


def test_the_planner_takes_the_largest_strips_that_fit():
    config = StylizeConfig(size=2048, scale_steps=(100,))  # one scale
    by_strip = {p: _estimate(config.replace(remat=True, strip_pixels=p)) for p in memory.STRIP_CHOICES}
    # Smaller strips need less memory, and all of them far less than the whole image.
    assert list(by_strip.values()) == sorted(by_strip.values(), reverse=True)
    assert by_strip[memory.STRIP_CHOICES[0]] < _estimate(config)
    for larger, smaller in zip(memory.STRIP_CHOICES, memory.STRIP_CHOICES[1:]):
        for budget in (by_strip[smaller], by_strip[larger] - 1):
            chosen = _plan(config, budget)
            assert chosen.config == config.replace(remat=True, strip_pixels=smaller), budget
            assert chosen.estimate == by_strip[smaller] <= budget
    assert _plan(config, _estimate(config) - 1).config.strip_pixels == memory.STRIP_CHOICES[0]


@pytest.mark.parametrize("gib", [2.5, 4, 8])
def test_coarse_scales_that_fit_whole_run_whole(gib):
    from jaxstyle import step, vgg

    config = StylizeConfig(size=2048)  # 512, 1024 and 2048 px
    budget = round(gib * 2**30)
    whole = {s: _estimate(StylizeConfig(size=s)) for s in (512, 1024)}
    assert whole[512] < 2.5 * 2**30 < whole[1024] < 4 * 2**30 < _estimate(config)
    chosen = _plan(config, budget).config
    assert chosen.remat and chosen.remat_above == max(s for s in whole if whole[s] <= budget)
    # The network of each scale: whole up to remat_above, strips above it; --remat alone: every scale.
    model = vgg.VGG()
    assert [step.configured(model, chosen, s).remat for s in (512, 1024, 2048)] == \
        [False, chosen.remat_above == 512, True]
    assert _plan(config.replace(remat=True), budget).config.remat_above == 0


def test_remat_and_strip_pixels_override_the_planner():
    config = StylizeConfig(size=1024)
    assert _plan(config.replace(remat=True), 2**40).config == config.replace(
        remat=True, strip_pixels=memory.STRIP_CHOICES[0])
    fixed = config.replace(remat=True, strip_pixels=2**13)
    assert _plan(fixed, 2**40).config == fixed
    with pytest.raises(UsageError, match="is allowed by `max_memory`"):
        memory.plan_memory(fixed, PHOTO, *VGG19, [PAINTING], budget=_estimate(fixed) - 1,
                           source="allowed by `max_memory`")


def test_the_planner_refuses_only_what_no_strips_fit_and_names_the_largest_size_that_does():
    config = StylizeConfig(size=8192)
    smallest = memory.STRIP_CHOICES[-1]
    budget = 6 * 2**30
    with pytest.raises(UsageError, match=r"`size` 8192 needs about .* GiB of memory and 6\.0 GiB is available; "
                                         r"use `size` (\d+) or less") as info:
        _plan(config, budget)
    fits = int(info.value.args[0].split("use `size` ")[1].split()[0])
    assert _estimate(config.replace(size=fits, remat=True, strip_pixels=smallest)) <= budget
    assert _estimate(config.replace(size=fits + 1, remat=True, strip_pixels=smallest)) > budget
    assert _plan(config.replace(size=fits), budget).config.remat  # and that size is planned in strips
    with pytest.raises(UsageError, match="raise `max_memory`"):  # not even the fixed part fits
        memory.plan_memory(config, PHOTO, *VGG19, [PAINTING], budget=2**28, source="allowed by `max_memory`")


def test_the_plan_line_names_the_size_the_strips_and_the_memory():
    config = StylizeConfig(size=2048)
    whole = _plan(config, 2**40)
    gib = _estimate(config) / 2**30
    assert 9 < gib < 10  # one decimal below 10 GiB, whole GiB above
    assert whole.describe(PHOTO, VGG19[0]) == ("2048x1362 in 3 scales (512/1024/2048 px, 300/75/19 steps): "
                                               f"whole image, about {gib:.1f} GiB; 1,024 GiB is available")
    strips = _plan(config.replace(scale_steps=(50,)), _estimate(config.replace(remat=True, strip_pixels=2**18)))
    # 2**18 pixels of a 2048-wide image: 128 rows, a multiple of pool2's 4 rows; the halo is not counted.
    assert strips.describe(PHOTO, VGG19[0]).startswith("2048x1362, 50 steps: strips of 128 rows, about ")


# ---------------------------------------------------------------- the estimate against measured peaks

MEASURE = pathlib.Path(__file__).parent.parent / "scripts" / "measure_memory.py"


def _measured(size: int, weights_path, *options) -> dict:
    """Peak RSS of a fresh process running 2 steps at ``size`` (`scripts/measure_memory.py`), and the estimate."""
    cmd = [sys.executable, str(MEASURE), "--child", str(size), "--weights", str(weights_path), *map(str, options)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="peak RSS is the CPU backend's memory")
def test_the_estimate_covers_measured_peaks_of_the_tiny_network(tiny_weights):
    # Measured 410 and 453 MiB against 801 and 851: the fixed part (`memory.BASE`) is the real VGG19's.
    for size in (64, 512):
        r = _measured(size, tiny_weights)
        assert r["rss_peak_mib"] <= r["estimate_mib"] <= 2.2 * r["rss_peak_mib"], r


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="peak RSS is the CPU backend's memory")
def test_the_estimate_covers_a_measured_real_1024_px_step_in_strips(real_weights):
    """The planner's strips at 1024 px, measured: the estimate is above the peak, by at most 70%."""
    r = _measured(1024, weights.default_path(), "--remat", "--strip-pixels", 2**18)
    assert r["rss_peak_mib"] <= r["estimate_mib"] <= 1.7 * r["rss_peak_mib"], r
