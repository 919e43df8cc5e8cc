"""How much memory a run needs, so that a size too big is refused before any compute.

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
curvature pairs). The style images go through the network once per scale,
forward only, at ``style_scale`` times the size; with ``--style-scale`` above
about 1.5 that pass, ``STYLE_FACTOR * 4 * A_style`` summed over the style
images, is the larger one, and the estimate takes the larger of the two.

``BASE`` and ``ACTIVATION_FACTOR`` come from measurements on XLA:CPU with the
real VGG19 (``scripts/measure_memory.py``: peak RSS of one optimisation chunk
in a fresh process, sizes 128 to 1024): peak ~ 620 MiB (Adam) or 750 MiB
(L-BFGS, whose line search compiles a larger program) + 1.7-1.9 * 4A. The
constants round both up, so the estimate is 7-27% above every measurement
(most at small sizes, where the fixed part dominates).
With ``--remat`` the activations counted are those of one strip of each
stage cut at `plan.REMAT_SPLITS` plus the whole image's after the last cut
(`step_activation_elements`); measured with the command line's XLA flags,
765, 1032, 1087, 1443 and 1921 MiB at 384, 768, 1024, 1536 and 2048 px, and
the estimate is 1.4-1.6 times that. The style pass measured
~480 MiB + 0.73 * 4 A_style (``--style-scale 3`` at 384 and 512 px: 2240 and
3618 MiB; the estimate gives 2729 and 4232).

The limit is the machine's physical memory, and the check applies only to the
CPU backend: there the arrays live in RAM and a run past it is killed by the
operating system (or swaps for hours) instead of failing cleanly. A GPU or TPU
reports its own out-of-memory error, which the command line turns into a
one-line message.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Sequence

from jaxstyle import plan
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError

BASE = 800 * 2**20  # bytes: Python, JAX, XLA, the weights and the compiled step (measured 620-750 MiB)
ACTIVATION_FACTOR = 2.0  # peak bytes per activation byte (measured 1.7-1.9 from 128 to 1024 px)
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
        rows = plan.stage_rows(blocks, w // scale, split, start, plan.REMAT_PIXELS) \
            + 2 * plan.halo_rows(blocks, (split,), start)
        # The stage's layers for a strip: its rows at the input's scale, times the input's rows per image row.
        strip = min(rows * scale, h), w
        total += activation_elements(blocks, widths, strip, split) - (
            activation_elements(blocks, widths, strip, start) if start else 0)
        start = split
    return total + activation_elements(blocks, widths, hw, deepest) - (
        activation_elements(blocks, widths, hw, start) if start else 0)


def peak_bytes(config: StylizeConfig, content_shape: Sequence[int], blocks: Sequence[int],
               widths: Sequence[int], style_shapes: Sequence[Sequence[int]] = ()) -> int:
    """Estimated peak memory of a run of ``config``, in bytes.

    Args:
      config: the settings; the largest scale (``config.size``) decides.
      content_shape, style_shapes: shapes of the content and style images.
      blocks, widths: the VGG architecture.
    Returns:
      The estimate of the module docs: the larger of `step_bytes` and
      `style_pass_bytes`. The network's compute dtype is taken as float32
      (bfloat16 would halve the activations: the estimate errs high).
    """
    return int(BASE + max(step_bytes(config, content_shape, blocks, widths),
                          style_pass_bytes(config, blocks, widths, style_shapes)))


def step_bytes(config: StylizeConfig, content_shape: Sequence[int], blocks: Sequence[int],
               widths: Sequence[int]) -> float:
    """Bytes of one optimisation step at the output size, above `BASE`: activations and image copies."""
    h, w = plan.output_shape(content_shape, config.size)
    deepest = plan.deepest(blocks, (*config.content_layers, *config.style_layers))
    copies = LBFGS_IMAGE_COPIES if config.optimizer == "lbfgs" else ADAM_IMAGE_COPIES
    return ACTIVATION_FACTOR * 4 * step_activation_elements(config, blocks, widths, (h, w), deepest) \
        + copies * 4 * h * w * 3


def style_pass_bytes(config: StylizeConfig, blocks: Sequence[int], widths: Sequence[int],
                     style_shapes: Sequence[Sequence[int]]) -> float:
    """Bytes of the style images' forward pass at ``style_scale`` times the size, above `BASE`."""
    if not config.style_layers:
        return 0.0
    deepest = plan.deepest(blocks, config.style_layers)
    size = plan.style_size(config, config.size)
    return STYLE_FACTOR * 4 * sum(  # with remat in strips too
        step_activation_elements(config, blocks, widths, plan.output_shape(s, size), deepest) for s in style_shapes)


def physical_memory() -> int | None:
    """The machine's physical memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(config: StylizeConfig, content_shape: Sequence[int], blocks: Sequence[int],
                 widths: Sequence[int], style_shapes: Sequence[Sequence[int]] = (), *,
                 available: int | None = None) -> None:
    """Refuse a run whose `peak_bytes` exceed ``available`` (default: the physical memory).

    Raises:
      UsageError: with the estimate, the limit, and the largest value of the
        setting that decides (``size``, or ``style_scale`` when the style
        images' pass is the larger) that fits.
    """
    available = physical_memory() if available is None else available
    need = peak_bytes(config, content_shape, blocks, widths, style_shapes)
    if available is None or need <= available:
        return
    needs = f"needs about {_gib(need)} GiB of memory and this machine has {_gib(available)} GiB"

    def fits(changed: StylizeConfig) -> bool:
        return peak_bytes(changed, content_shape, blocks, widths, style_shapes) <= available

    if style_pass_bytes(config, blocks, widths, style_shapes) > step_bytes(config, content_shape, blocks, widths):
        style = plan.style_size(config, config.size)
        largest = _largest(lambda s: fits(config.replace(style_scale=s / config.size)), 1, style)
        advice = (f"use `style_scale` {math.floor(largest / config.size * 1000) / 1000:g} or less"
                  if largest else "free some memory")
        raise UsageError(f"`style_scale` {config.style_scale:g} (style images {style} px on their longest side) "
                         f"{needs}; {advice}")
    size = _largest(lambda s: fits(config.replace(size=s, scales=())), 16, config.size)
    advice = f"use `size` {size} or less" if size else "free some memory"
    if not config.remat:
        remat_size = _largest(lambda s: fits(config.replace(size=s, scales=(), remat=True)), 16, config.size)
        advice += f" (with `remat`, `size` {remat_size} or less)" if remat_size else ""
    raise UsageError(f"`size` {config.size} {needs}; {advice}")


def _largest(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest integer in [low, high] for which ``fits`` holds (it holds below some bound), or None."""
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low if fits(low) else None


def _gib(n: float) -> str:
    g = n / 2**30
    return f"{g:.1f}" if g < 10 else f"{g:,.0f}"
