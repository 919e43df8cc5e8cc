"""How much memory a run needs, and how it fits: the whole image at once, or strip by strip.

A step of the optimisation runs the VGG network forward and backward at the
output size. Its memory is dominated by the activations the forward pass keeps
for the backward pass: VGG19 has 64 channels at full resolution, about 600
float32 activations per output pixel up to ``relu5_1``, far more than the
image and the optimiser's copies of it. The estimate is

    peak = BASE + ACTIVATION_FACTOR * 4 * A + IMAGE_COPIES * 4 * (h * w * 3)

where ``A`` is the number of elements of every activation (conv, ReLU, pool)
from ``conv1_1`` to the deepest layer the losses read, at the largest scale,
and ``IMAGE_COPIES`` counts the image-sized buffers of the optimiser (Adam:
the iterate, its gradient, two moments, the average; L-BFGS adds its 10
curvature pairs). In strips (``remat``) ``A`` counts one strip of each stage
cut at `plan.REMAT_SPLITS` plus the whole image's after the last cut
(`step_activation_elements`). The style images go through the network once
per scale, forward only, at ``style_scale`` times the size; with
``--style-scale`` above about 1.5 that pass, ``STYLE_FACTOR * 4 * A_style``
summed over the style images, is the larger one, and the estimate takes the
larger of the two.

The constants come from peaks measured on XLA:CPU with the command line's
flags (`runtime.DEFAULT_CPU_FLAGS`, whose memory-optimised schedule keeps about
half the activations of XLA's default one), real VGG19, peak resident memory
of a fresh process running one chunk of steps (``scripts/measure_memory.py``;
``scripts/bench.py`` at 2048 px). Peak minus about 620 MiB and the image
copies is 0.75-1.29 times ``4 * A``; MiB, measured against the estimate:

    run                        measured     estimate
    Adam 384 px                      933         1126
    Adam 1024 px                    2159         3133
    Adam 2048 px                    6731        10138
    L-BFGS 384 / 768 px       956 / 1488   1153 / 2218
    strips 2**16, 1024 px           1087         1401
    strips 2**18, 1024 px           1342         1968
    strips 2**16, 2048 px           2170         2462
    strips 2**19, 2048 px           2603         3785
    the command line, whole runs (``scripts/print_bench.py``):
    1024 px, 50 steps               2257         3133
    2048 px, 3 scales, strips       2947         3785
    4096 px, strips 2**19           4911         7852

so the estimate is 1.1-1.6 times every measurement. The style pass measured
~480 MiB + 0.73 * 4 A_style (``--style-scale 3`` at 384 and 512 px: 2240 and
3618 MiB; the estimate gives 2729 and 4232). A Python program that calls the
library without `runtime.configure` runs XLA's default schedule: about 1.8
``4 * A`` for the whole image.

`plan_memory` chooses, for the memory a run may use, the whole image where it
fits, else the largest strips that do (`STRIP_CHOICES`), and refuses only a
size that fits in none. On a GPU the same estimate applies to the device's
memory; the one measurement there (H200, 256 px, a batch of 32) held 2277 MiB
of XLA temporaries against 6452 MiB of ``2 * 4 * A``, so it errs high.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable, Sequence

from jaxstyle import plan
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError

BASE = 800 * 2**20  # bytes: Python, JAX, XLA, the weights and the compiled step (measured 620-750 MiB)
ACTIVATION_FACTOR = 1.4  # peak bytes per activation byte (measured 0.75-1.29 with the command line's flags)
ADAM_IMAGE_COPIES = 8
LBFGS_IMAGE_COPIES = ADAM_IMAGE_COPIES + 2 * 10 + 4  # + 10 curvature pairs (s, y) and line-search points
STYLE_FACTOR = 0.8  # the style images' forward pass: peak bytes per activation byte (measured 0.73)


def activation_elements(blocks: Sequence[int], widths: Sequence[int], hw: tuple[int, int], deepest: str) -> int:
    """Elements of all activations of one forward pass, from conv1_1 through ``deepest``.

    Args:
      blocks, widths: the VGG architecture (convolutions per block, channels per block).
      hw: (h, w) of the input image.
      deepest: the deepest layer computed, e.g. "relu5_1".
    Returns:
      The number of float elements: sum over layers of h_l * w_l * c_l.
    """
    order = plan.layer_names(blocks)
    h, w = hw
    total = 0
    for name in order[: order.index(deepest) + 1]:
        if name.startswith("pool"):
            h, w = h // 2, w // 2  # 2x2 pooling, stride 2, no padding
        total += h * w * widths[int(name[4]) - 1]  # conv3_1, relu3_1, pool3: block 3
    return total


def step_activation_elements(config: StylizeConfig, blocks: Sequence[int], widths: Sequence[int],
                             hw: tuple[int, int], deepest: str) -> int:
    """Elements of the activations a step keeps for its backward pass (`activation_elements`).

    Without ``remat``, every activation of the image. With it, each stage cut
    at `plan.REMAT_SPLITS` holds one strip's at a time (its own rows and a
    halo on each side), and the layers after the last split the whole image's.
    """
    if not config.remat:
        return activation_elements(blocks, widths, hw, deepest)
    order = plan.layer_names(blocks)
    total, start, (h, w) = 0, None, hw
    for split in plan.REMAT_SPLITS:
        if order.index(split) >= order.index(deepest):
            break
        scale = 1 if start is None else plan.row_scale(blocks, start)  # image rows per row of the stage's input
        rows = plan.stage_rows(blocks, w // scale, split, start, config.strip_pixels or plan.REMAT_PIXELS) \
            + 2 * plan.halo_rows(blocks, (split,), start)
        # The stage's layers for a strip: its rows at the input's scale, times the input's rows per image row.
        strip = min(rows * scale, h), w
        total += activation_elements(blocks, widths, strip, split) - (
            activation_elements(blocks, widths, strip, start) if start else 0)
        start = split
    return total + activation_elements(blocks, widths, hw, deepest) - (
        activation_elements(blocks, widths, hw, start) if start else 0)


def peak_bytes(config: StylizeConfig, content_shape: Sequence[int], blocks: Sequence[int],
               widths: Sequence[int], style_shapes: Sequence[Sequence[int]] = (), items: int = 1) -> int:
    """Estimated peak memory of a run of ``config``, in bytes.

    Args:
      config: the settings; the largest scale (``config.size``) decides.
      content_shape, style_shapes: shapes of the content and style images.
      blocks, widths: the VGG architecture.
      items: images optimised together in one program (a batch or a sweep).
    Returns:
      The estimate of the module docs: the larger of `step_bytes` and
      `style_pass_bytes`. The network's compute dtype is taken as float32
      (bfloat16 would halve the activations: the estimate errs high).
    """
    return int(BASE + max(step_bytes(config, content_shape, blocks, widths, items),
                          style_pass_bytes(config, blocks, widths, style_shapes)))


def step_bytes(config: StylizeConfig, content_shape: Sequence[int], blocks: Sequence[int],
               widths: Sequence[int], items: int = 1) -> float:
    """Bytes of one optimisation step at the output size, above `BASE`: activations and image copies.

    Adam's items run side by side (vmapped): each holds its activations.
    L-BFGS's run one after another (`optimize`): one item's activations at a
    time, and every item's image copies.
    """
    h, w = plan.output_shape(content_shape, config.size)
    deepest = plan.deepest(blocks, (*config.content_layers, *config.style_layers))
    lbfgs = config.optimizer == "lbfgs"
    copies = LBFGS_IMAGE_COPIES if lbfgs else ADAM_IMAGE_COPIES
    return ACTIVATION_FACTOR * 4 * step_activation_elements(config, blocks, widths, (h, w), deepest) \
        * (1 if lbfgs else items) + items * copies * 4 * h * w * 3


def style_pass_bytes(config: StylizeConfig, blocks: Sequence[int], widths: Sequence[int],
                     style_shapes: Sequence[Sequence[int]]) -> float:
    """Bytes of the style images' forward pass at ``style_scale`` times the size, above `BASE`.

    Its activations (in strips too, with ``remat``), and each style image at
    that size twice (the resized image and the resize's intermediate), which
    no strip size makes smaller.
    """
    if not config.style_layers:
        return 0.0
    deepest = plan.deepest(blocks, config.style_layers)
    size = plan.style_size(config, config.size)
    shapes = [plan.output_shape(s, size) for s in style_shapes]
    return sum(STYLE_FACTOR * 4 * step_activation_elements(config, blocks, widths, hw, deepest)
               + 2 * 4 * 3 * hw[0] * hw[1] for hw in shapes)


def physical_memory() -> int | None:
    """The machine's physical memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(config: StylizeConfig, content_shape: Sequence[int], blocks: Sequence[int],
                 widths: Sequence[int], style_shapes: Sequence[Sequence[int]] = (), *,
                 available: int | None = None, what: str = "", items: int = 1) -> None:
    """Refuse a run whose `peak_bytes` exceed ``available`` (default: the physical memory).

    ``what`` says what ``available`` is ("available", "allowed by `max_memory`"):
    the message reads "... and 6.0 GiB is available".

    Raises:
      UsageError: with the estimate, the limit, and the largest value of the
        setting that decides (``size``, or ``style_scale`` when the style
        images' pass is the larger) that fits.
    """
    available = physical_memory() if available is None else available
    need = peak_bytes(config, content_shape, blocks, widths, style_shapes, items)
    if available is None or need <= available:
        return
    has = f"{_gib(available)} GiB is {what}" if what else f"this machine has {_gib(available)} GiB"
    needs = f"needs about {_gib(need)} GiB of memory and {has}"
    none_fits = "raise `max_memory`" if "max_memory" in what else "free some memory"

    def fits(changed: StylizeConfig) -> bool:
        return peak_bytes(changed, content_shape, blocks, widths, style_shapes, items) <= available

    if style_pass_bytes(config, blocks, widths, style_shapes) > step_bytes(config, content_shape, blocks, widths,
                                                                           items):
        style = plan.style_size(config, config.size)
        largest = _largest(lambda s: fits(config.replace(style_scale=s / config.size)), 1, style)
        advice = (f"use `style_scale` {math.floor(largest / config.size * 1000) / 1000:g} or less"
                  if largest else none_fits)
        raise UsageError(f"`style_scale` {config.style_scale:g} (style images {style} px on their longest side) "
                         f"{needs}; {advice}")
    size = _largest(lambda s: fits(config.replace(size=s, scales=())), 16, config.size)
    advice = f"use `size` {size} or less" if size else none_fits
    if not config.remat:
        remat_size = _largest(lambda s: fits(config.replace(size=s, scales=(), remat=True)), 16, config.size)
        advice += f" (with `remat`, `size` {remat_size} or less)" if remat_size else ""
    raise UsageError(f"`size` {config.size} {needs}; {advice}")


# Strip sizes the planner tries, largest (fastest: least halo recomputed) first.
STRIP_CHOICES = tuple(2**k for k in range(20, 13, -1))
# The most a CPU run takes unless told (`RunOptions.max_memory`), when half of the available
# memory is more: enough for whole-image steps up to about 1600 px, strips beyond.
CPU_MEMORY = 4 * 2**30


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """How a run fits in its memory: the settings to run with and what they are expected to need.

    Attributes:
      config: the run's settings with ``remat`` and ``strip_pixels`` as planned.
      estimate: `peak_bytes` of ``config``.
      budget: the bytes the run may use, or None where nothing says.
      source: what the budget is, after "N GiB is": e.g. "allowed by `max_memory`".
    """

    config: StylizeConfig
    estimate: int
    budget: int | None
    source: str

    def describe(self, content_shape: Sequence[int], blocks: Sequence[int]) -> str:
        """One line, e.g. "2048x1362 in 3 scales (512/1024/2048 px, 300/75/19 steps): strips
        of 256 rows, about 3.1 GiB; 4.0 GiB is a CPU run's default"."""
        h, w = plan.output_shape(content_shape, self.config.size)
        how = "whole image"
        sizes, steps = plan.scale_sizes(self.config), plan.scale_steps(self.config)
        schedule = f", {steps[0]} step{'s' * (steps[0] != 1)}" if len(sizes) == 1 else \
            f" in {len(sizes)} scales ({'/'.join(map(str, sizes))} px, {'/'.join(map(str, steps))} steps)"
        if self.config.remat:
            rows = plan.stage_rows(blocks, w, plan.REMAT_SPLITS[0], None,
                                   self.config.strip_pixels or plan.REMAT_PIXELS)
            how = f"strips of {min(rows, h)} rows" + (f" above {self.config.remat_above} px"
                                                       if self.config.remat_above else "")
        limit = f"; {_gib(self.budget)} GiB is {self.source}" if self.budget else ""
        return f"{w}x{h}{schedule}: {how}, about {_gib(self.estimate)} GiB{limit}"


def plan_memory(config: StylizeConfig, content_shape: Sequence[int], blocks: Sequence[int],
                widths: Sequence[int], style_shapes: Sequence[Sequence[int]] = (), *,
                budget: int | None, source: str = "available", items: int = 1) -> MemoryPlan:
    """Choose whole-image steps, or strips and their size, so that a run fits in ``budget`` bytes.

    Whole-image steps when they fit (they are the fastest), else strips of the
    first blocks (`plan.REMAT_SPLITS`), the largest of `STRIP_CHOICES` that
    fits; the coarse scales that fit whole still run whole (``remat_above``).
    ``config.remat`` forces strips at every scale and ``config.strip_pixels``
    their size. With no budget the run goes as configured.

    Raises:
      UsageError: not even the smallest strips fit; names the largest size
        (or ``style_scale``) that does, as `check_memory` does.
    """
    def planned(c: StylizeConfig) -> MemoryPlan:
        return MemoryPlan(c, peak_bytes(c, content_shape, blocks, widths, style_shapes, items), budget, source)

    if budget is None:
        return planned(config)
    tries = [config] if config.remat and config.strip_pixels else [
        *([] if config.remat else [config]),
        *(config.replace(remat=True, strip_pixels=config.strip_pixels or p) for p in STRIP_CHOICES)]
    for option in tries:
        chosen = planned(option)
        if chosen.estimate <= budget:
            if option.remat and not config.remat:
                whole = [s for s in plan.scale_sizes(option)[:-1] if planned(_single(config, s)).estimate <= budget]
                chosen = dataclasses.replace(chosen, config=option.replace(remat_above=max(whole, default=0)))
            return chosen
    check_memory(tries[-1], content_shape, blocks, widths, style_shapes, available=budget, what=source,
                 items=items)
    return planned(tries[-1])  # unreachable: check_memory raised


def _single(config: StylizeConfig, size: int) -> StylizeConfig:
    """A single-scale run of ``config``'s settings at ``size``, whole image."""
    return config.replace(size=size, scales=(), scale_steps=(1,), multiscale=False, remat=False, remat_above=0)


def available_memory() -> int | None:
    """Bytes of memory available to a new process now (Linux's MemAvailable), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return physical_memory()


def _largest(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest integer in [low, high] for which ``fits`` holds (it holds below some bound), or None."""
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low if fits(low) else None


def _gib(n: float) -> str:
    g = n / 2**30
    return f"{g:.1f}" if g < 10 else f"{g:,.0f}"
