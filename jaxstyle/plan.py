"""The arithmetic of a run, without JAX: layer names, sizes, scales, checks, sweep grids, strips.

Everything here is plain Python on shapes and settings. The command line uses
it to refuse bad input in milliseconds, before JAX starts; the library uses
the same functions, so no rule is written twice.

- The network's names and shapes: `layer_names`, `conv_names`, `ARCHITECTURES`,
  `poolings_before`, `conv_flops`.
- Sizes: `output_shape` (the longest side rule) and `scale_sizes` (the
  coarse-to-fine schedule).
- Checks before any compute: `check_layers`, `check_styles`, `check_sizes`,
  `check_grid`.
- Sweep grids: `SWEEPABLE`, `grid_points`.
- Strip geometry of `jaxstyle.strips`: `row_scale`, `halo_rows`, `strip_rows`,
  `stage_rows`, `strips_for`.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError

# ----------------------------------------------------------------------------
# The network's names and shapes

VGG19_BLOCKS = (2, 2, 4, 4, 4)
VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG_WIDTHS = (64, 128, 256, 512, 512)
# A tiny network with the VGG19 layer names that style transfer uses (the first two
# convolutions of every block: relu1_1, relu1_2, ... relu5_2), for fast tests with random weights.
TINY_BLOCKS = (2, 2, 2, 2, 2)
TINY_WIDTHS = (4, 6, 8, 8, 8)
# The input conventions a weights file can record (`vgg.preprocess`).
PREPROCESSING = ("caffe", "torchvision")
ARCHITECTURES = {
    "vgg19": (VGG19_BLOCKS, VGG_WIDTHS),
    "vgg16": (VGG16_BLOCKS, VGG_WIDTHS),
    "tiny": (TINY_BLOCKS, TINY_WIDTHS),
}


def conv_names(blocks: Sequence[int]) -> tuple[str, ...]:
    """Names of the convolutions of a VGG with ``blocks`` convs per block, in order."""
    return tuple(f"conv{b}_{i}" for b, n in enumerate(blocks, 1) for i in range(1, n + 1))


def layer_names(blocks: Sequence[int]) -> tuple[str, ...]:
    """Every layer name of a VGG with ``blocks`` convs per block, in forward order.

    >>> layer_names((1, 1))
    ('conv1_1', 'relu1_1', 'pool1', 'conv2_1', 'relu2_1', 'pool2')
    """
    names = []
    for b, n in enumerate(blocks, 1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return tuple(names)


def deepest(blocks: Sequence[int], layers: Sequence[str]) -> str:
    """The deepest of ``layers`` in forward order."""
    order = layer_names(blocks)
    return max(layers, key=order.index)


def poolings_before(blocks: Sequence[int], layer: str) -> int:
    """Poolings up to and including ``layer``: its activations are ``2**p`` times smaller on each side."""
    order = layer_names(blocks)
    return sum(name.startswith("pool") for name in order[: order.index(layer) + 1])


def conv_flops(height: int, width: int, layer: str, blocks: Sequence[int] = VGG19_BLOCKS,
               widths: Sequence[int] = VGG_WIDTHS) -> int:
    r"""FLOPs of the 3x3 convolutions of one forward pass of one image, up to ``layer``.

    .. math:: \sum_\mathrm{conv} 2 \cdot h_l w_l \cdot 9 \, C_\mathrm{in} C_\mathrm{out}

    (a multiply and an add per kernel tap, padding positions included), with
    :math:`h_l, w_l` halved (rounded down) by each pooling before the layer.
    ReLU, pooling and the losses are left out: they are a few per cent. The
    gradient with respect to the input (what style transfer needs; the kernels
    are fixed) is a convolution of the same size per layer, so a step of the
    optimisation costs twice this.

    Args:
      height, width: the image size in pixels.
      layer: the deepest layer computed, e.g. "relu5_1" (which needs conv5_1).
      blocks, widths: the architecture (VGG19 by default).
    Returns:
      The FLOP count, an int.
    """
    order = layer_names(blocks)
    if layer not in order:
        raise ValueError(f"unknown VGG layer {layer!r}; this network has {', '.join(order)}")
    flops, channels, h, w = 0, 3, height, width
    for name in order[: order.index(layer) + 1]:
        if name.startswith("conv"):
            out = widths[int(name[4]) - 1]
            flops += 2 * h * w * 9 * channels * out
            channels = out
        elif name.startswith("pool"):
            h, w = h // 2, w // 2
    return flops


# ----------------------------------------------------------------------------
# Sizes and scales

MIN_SCALE = 128  # first size of the --multiscale schedule, growing by sqrt(2)
# Outputs larger than this go coarse to fine by default, from the largest size of at least
# COARSE_FROM obtained by halving: 2048 px runs at 512, 1024 and 2048 px.
SINGLE_SCALE_MAX = 1024
COARSE_FROM = 512


def output_shape(shape: Sequence[int], size: int) -> tuple[int, int]:
    """(h, w) of an image of ``shape`` resized so that its longest side is ``size``."""
    h, w = shape[:2]
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def scale_sizes(config: StylizeConfig) -> tuple[int, ...]:
    """Longest side at each scale of the run, coarse to fine, ending with ``config.size``.

    - ``config.scales`` if given (sorted, then the size);
    - with ``multiscale``: from `MIN_SCALE` growing by sqrt(2) (as crowsonkb's
      style-transfer-pytorch does);
    - with n ``scale_steps``: n sizes, each twice the one before;
    - else one scale up to `SINGLE_SCALE_MAX`, and above it sizes doubling
      from at least `COARSE_FROM` (most steps where they are cheap).

    >>> scale_sizes(StylizeConfig(size=2048)), scale_sizes(StylizeConfig(size=1500))
    ((512, 1024, 2048), (750, 1500))
    """
    n = len(config.scale_steps)
    if config.scales:
        return tuple(sorted(set(config.scales) - {config.size})) + (config.size,)
    if config.multiscale:
        sizes, s = [], MIN_SCALE
        while s < config.size * 0.95:
            sizes.append(round(s))
            s *= math.sqrt(2)
        return (*sizes, config.size)
    if n == 0 and config.size > SINGLE_SCALE_MAX:
        n = 1 + int(math.log2(config.size / COARSE_FROM))
    return tuple(round(config.size / 2**k) for k in range(max(n, 1) - 1, 0, -1)) + (config.size,)


def scale_steps(config: StylizeConfig) -> tuple[int, ...]:
    r"""Steps at each scale of `scale_sizes`: ``config.scale_steps``, or by default
    ``steps`` at the first scale and fewer at each larger one,

    .. math:: n_k = \max\left(1, \operatorname{round}\left(n_0 \, (s_0 / s_k)^2\right)\right),

    so that every scale costs about as much: a step's time grows with the
    pixels, :math:`s_k^2`. A 2048 px run takes 300, 75 and 19 steps at 512,
    1024 and 2048 px: three times the FLOPs of a 512 px run of 300 steps
    (measured on a CPU, with its top scale in strips: 3.8 times the time).
    """
    sizes = scale_sizes(config)
    if config.scale_steps:
        if len(config.scale_steps) != len(sizes):
            raise UsageError(f"`scale_steps` must give one step count per scale ({', '.join(map(str, sizes))} px), "
                             f"got {','.join(map(str, config.scale_steps))}")
        return config.scale_steps
    return tuple(max(1, round(config.steps * (sizes[0] / s) ** 2)) for s in sizes)


def style_size(config: StylizeConfig, size: int) -> int:
    """Longest side of the style images at the scale of longest side ``size``."""
    return max(1, round(size * config.style_scale))


def total_steps(config: StylizeConfig) -> int:
    """Steps of a whole run, over all its scales."""
    return sum(scale_steps(config))


def steps_before(config: StylizeConfig, scale: int) -> int:
    """Steps of the scales before scale ``scale`` (an index into `scale_sizes`)."""
    return sum(scale_steps(config)[:scale])


def continuing(config: StylizeConfig, init_shape: Sequence[int]) -> StylizeConfig:
    """The run that continues a finished smaller output of ``init_shape`` (h, w, ...): the scales
    no larger than it are done already, so it starts at the next one (at the final size at the latest).

    A single-scale run is unchanged: its start image is resized to the output.
    """
    sizes, steps = scale_sizes(config), scale_steps(config)
    keep = [k for k, s in enumerate(sizes) if s > max(init_shape[:2])] or [len(sizes) - 1]
    if len(keep) == len(sizes):
        return config
    return config.replace(multiscale=False, scales=tuple(sizes[k] for k in keep[:-1]),
                          scale_steps=tuple(steps[k] for k in keep))


def scale_work(config: StylizeConfig, content_shape: Sequence[int], blocks: Sequence[int],
               widths: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``(steps, FLOPs per step)`` of each scale of a run of one image, coarse to fine.

    A step's FLOPs are its convolutions': the forward pass to the deepest
    layer the losses read and the gradient with respect to the input, which
    costs as much (`conv_flops`). Strips recompute the forward pass and their
    halos on top: the time per FLOP measured for such runs covers that.
    """
    deepest_layer = deepest(blocks, (*config.content_layers, *config.style_layers))
    return tuple((n, 2 * conv_flops(*output_shape(content_shape, size), deepest_layer, blocks, widths))
                 for n, size in zip(scale_steps(config), scale_sizes(config)))


# ----------------------------------------------------------------------------
# Checks before any compute


def check_layers(config: StylizeConfig, blocks: Sequence[int]) -> None:
    """Refuse layer names the network does not have."""
    names = layer_names(blocks)
    unknown = [n for n in (*config.content_layers, *config.style_layers) if n not in names]
    if unknown:
        raise UsageError(f"unknown layer(s) {', '.join(unknown)}; layers are named like relu4_2 "
                         f"(conv{{block}}_{{i}}, relu{{block}}_{{i}}, pool{{block}})")


def check_styles(config: StylizeConfig, n_styles: int, n_masks: int | None = None) -> None:
    """Refuse blend weights or mask pairs that do not fit the number of style images.

    Args:
      config: the settings (``style_blend``).
      n_styles: how many style images were given.
      n_masks: how many (content mask, style mask) pairs, or None without masks.
    """
    if n_styles < 1:
        raise UsageError("no style image was given")
    if config.style_blend and len(config.style_blend) != n_styles:
        raise UsageError(f"`style_blend` has {len(config.style_blend)} weights but {n_styles} "
                         f"style image{'s were' if n_styles != 1 else ' was'} given")
    if n_masks is not None and n_masks != n_styles:
        raise UsageError(f"{n_masks} mask pairs for {n_styles} style images; give one "
                         "content mask and one style mask per style image")


def _min_side(blocks: Sequence[int], layers: Sequence[str]) -> tuple[str, int]:
    """The deepest of ``layers`` and the fewest pixels per side its input needs (``2**poolings``)."""
    layer = deepest(blocks, layers)
    return layer, 2 ** poolings_before(blocks, layer)


def _smallest_size(shape: Sequence[int], need: int) -> int:
    """The smallest longest side at which an image of ``shape`` has at least ``need`` pixels per side."""
    size = need
    while min(output_shape(shape, size)) < need:
        size += max(1, size // 64)
    while size > need and min(output_shape(shape, size - 1)) >= need:
        size -= 1
    return size


def check_sizes(config: StylizeConfig, blocks: Sequence[int], content_shape: Sequence[int],
                style_shapes: Sequence[Sequence[int]]) -> None:
    """Refuse scales at which an image is too small for the deepest layer.

    A layer after ``p`` poolings needs at least ``2**p`` pixels on each side of
    its input, or its activations are empty and the loss is NaN. `StylizeConfig`
    checks only the longest side, which is not enough for a wide image, the
    coarse scales of ``multiscale``, or a ``style_scale`` below 1.

    Raises:
      UsageError: naming the image, its size at that scale, the layer, and the
        setting that would make it fit.
    """
    layer, need = _min_side(blocks, (*config.content_layers, *config.style_layers))
    sizes = scale_sizes(config)
    scale_steps(config)  # one step count per scale
    for size in sizes:
        h, w = output_shape(content_shape, size)
        if min(h, w) < need:
            at_least = _smallest_size(content_shape, need)
            fix = f"raise `size` to at least {at_least}" if len(sizes) == 1 else \
                f"raise `scales` (or `size`) to at least {at_least}"
            raise UsageError(f"at size {size} the output is {w}x{h} pixels, too small for layer {layer}, "
                             f"which needs at least {need} pixels on each side; {fix}")
        if not config.style_layers:
            continue
        style_layer, style_need = _min_side(blocks, config.style_layers)
        for i, shape in enumerate(style_shapes):
            h, w = output_shape(shape, style_size(config, size))
            if min(h, w) < style_need:
                scale = math.ceil(_smallest_size(shape, style_need) / size * 1000) / 1000
                raise UsageError(f"at size {size} with `style_scale` {config.style_scale:g}, style image {i + 1} "
                                 f"is {w}x{h} pixels, too small for layer {style_layer}, which needs at least "
                                 f"{style_need} pixels on each side; raise `style_scale` to at least {scale:g}")


def check_layout(config: StylizeConfig, *, rows: bool) -> None:
    """Refuse ``remat`` with the image's rows split over devices: both split the rows, and do not combine."""
    if rows and config.remat:
        raise UsageError("`remat` and `shard_image` both split the image's rows and do not combine; "
                         "use one of them")


def check_mask_coverage(content_masks: Sequence[Any]) -> None:
    """Refuse content masks that leave part of the output without any style.

    Args:
      content_masks: one (h_i, w_i) array in [0, 1] per style image (NumPy-like;
        sizes may differ: each is sampled at the first one's positions).
    """
    import numpy as np  # only this check needs arrays

    h, w = np.shape(content_masks[0])[:2]
    total = np.zeros((h, w), np.float64)
    for m in content_masks:
        mh, mw = np.shape(m)[:2]
        rows = (np.arange(h) * mh) // h
        cols = (np.arange(w) * mw) // w
        total += np.asarray(m, np.float64)[np.ix_(rows, cols)]
    if np.min(total) < 1e-3:
        raise UsageError("the content masks leave part of the image without any style; "
                         "make them cover the whole image")


# ----------------------------------------------------------------------------
# Sweep grids

# Fields of `StylizeConfig` that may differ between the items of one program:
# they enter it as traced arrays (loss weights, Adam's learning rate in the
# optimiser state) or only change the starting image (the seed).
SWEEPABLE = ("content_weight", "style_weight", "tv_weight", "lr", "seed",
             "content_layer_weights", "style_layer_weights")


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """All combinations of a grid, the last key varying fastest.

    >>> grid_points({"a": [1, 10], "b": [0, 1]})
    [{'a': 1, 'b': 0}, {'a': 1, 'b': 1}, {'a': 10, 'b': 0}, {'a': 10, 'b': 1}]
    """
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def check_grid(config: StylizeConfig, grid: Mapping[str, Sequence[Any]], *,
               init_image: bool = False) -> list[StylizeConfig]:
    """Refuse a sweep grid that cannot run; return the config of each point.

    Args:
      config: the settings shared by every point.
      grid: setting name -> its values.
      init_image: the run starts from a given image (so the seed changes nothing).
    Raises:
      UsageError: an empty grid or value list, a setting that cannot be swept,
        a value given twice, an out-of-range value (`StylizeConfig`'s checks),
        or several seeds without noise to seed.
    """
    if not grid:
        raise UsageError("the sweep grid is empty; give at least one setting and its values")
    for name, values in grid.items():
        if name not in SWEEPABLE:
            raise UsageError(f"cannot sweep `{name}`; sweepable settings are {', '.join(SWEEPABLE)}")
        if len(values) == 0:
            raise UsageError(f"`{name}` has no values to sweep")
        seen = []
        for value in values:
            if value in seen:
                raise UsageError(f"`{name}` lists the value {value} twice; give each value once")
            seen.append(value)
    if "seed" in grid and len(grid["seed"]) > 1 and (init_image or config.init != "noise"):
        raise UsageError(f"sweeping `seed` changes nothing with init {config.init!r}; use init 'noise'")
    return [config.replace(**point) for point in grid_points(grid)]  # validates every value


def programs(n: int, batch_size: int | None, devices: int = 1) -> list[range]:
    """Split ``n`` items into programs of ``batch_size`` (default: all), each padded to a multiple of ``devices``.

    Returns:
      The item ranges, in order; every program is run at the size of the first
      (`program_size`), the last padded.
    """
    size = program_size(n, batch_size, devices)
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def pass_configs(config: StylizeConfig, video) -> list[StylizeConfig]:
    """The settings of each pass over a window of video frames (`jaxstyle.video`).

    One pass of ``config`` in the independent mode. In the multipass mode the
    first pass runs half of ``config.steps`` (its scales as configured), and
    the later passes share the rest, at the output size only: a frame costs
    what it costs alone.

    Args:
      config: the settings of every frame.
      video: its `config.VideoConfig`.
    """
    if video.mode != "multipass" or video.passes == 1:
        return [config]
    first = math.ceil(config.steps / 2)
    later = max(1, math.ceil((config.steps - first) / (video.passes - 1)))
    rest = config.replace(steps=later, scale_steps=(later,), scales=(), multiscale=False)
    return [config.replace(steps=first), *[rest] * (video.passes - 1)]


def program_size(n: int, batch_size: int | None, devices: int = 1) -> int:
    """Items per compiled program: ``batch_size`` (default ``n``), at most ``n``, rounded up to ``devices``."""
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"`batch_size` must be at least 1, got {batch_size}")
    size = min(batch_size or n, n)
    return math.ceil(size / devices) * devices


# ----------------------------------------------------------------------------
# Strip geometry (`jaxstyle.strips`)

# Above this many pixels a style image's statistics are computed in strips.
MAX_PIXELS = 2**22  # 4.2 megapixels, e.g. 2048 x 2048: about 3 GiB of VGG19 activations at once
# Pixels of a strip's own rows (halo excluded), which bounds its activations' memory.
STRIP_PIXELS = 2**21
# With ``remat`` a step runs the network in stages cut at REMAT_SPLITS, each but the last
# in strips of about REMAT_PIXELS pixels of its input, which bounds the memory of its backward pass.
REMAT_SPLITS = ("pool2", "pool3")
REMAT_PIXELS = 2**16


def layers_after(blocks: Sequence[int], start: str | None) -> tuple[str, ...]:
    """The layers computed from the input ``start`` (None: from the image)."""
    order = layer_names(blocks)
    return order if start is None else order[order.index(start) + 1:]


def row_scale(blocks: Sequence[int], layer: str, start: str | None = None) -> int:
    """Input rows per row of ``layer``: 2 to the number of poolings up to and including it.

    The input is the image, or the activation of the layer ``start``.
    """
    after = layers_after(blocks, start)
    return 2 ** sum(name.startswith("pool") for name in after[: after.index(layer) + 1])


def halo_rows(blocks: Sequence[int], layers: Sequence[str], start: str | None = None) -> int:
    """Rows of context above and below a strip that make its deepest layer exact.

    Each 3x3 convolution and each 2x2 pooling widens the receptive field by
    one row of its input on each side, and a row of the input of a layer
    after ``p`` poolings is ``2**p`` rows of the strip's input (the image, or
    the activation of ``start``). The sum is rounded up to a multiple of the
    deepest layer's `row_scale`. For VGG19 from the image up to relu5_1 it is
    85 rows, rounded to 96; up to pool2, 9 rounded to 12.
    """
    after = layers_after(blocks, start)
    last = max(layers, key=after.index)
    rows, scale = 0, 1
    for name in after[: after.index(last) + 1]:
        if name.startswith(("conv", "pool")):
            rows += scale
        if name.startswith("pool"):
            scale *= 2
    return math.ceil(rows / scale) * scale


def strip_rows(width: int, blocks: Sequence[int], layers: Sequence[str], pixels: int = STRIP_PIXELS,
               start: str | None = None) -> int:
    """Own rows of a strip of about ``pixels`` pixels of an input ``width`` wide.

    A multiple of the deepest layer's `row_scale`, and at least the halo, so
    that a strip computes at most three times its own rows.
    """
    after = layers_after(blocks, start)
    align = row_scale(blocks, max(layers, key=after.index), start)
    return max(halo_rows(blocks, layers, start), pixels // max(width, 1) // align * align)


def stage_rows(blocks: Sequence[int], width: int, split: str, start: str | None, pixels: int) -> int:
    """Own rows of a strip of the stage from ``start`` to ``split``, about ``pixels`` pixels of the image.

    The stage's input is ``width`` wide; its pixels each cover ``row_scale(start)**2``
    of the image's, so a smaller activation gets fewer pixels per strip.
    """
    scale = 1 if start is None else row_scale(blocks, start)
    return strip_rows(width, blocks, (split,), pixels // scale**2, start)


def strips_for(remat: bool, image_shape: Sequence[int], pixels: int = 0) -> dict | None:
    """How `strips.content_and_style` should run an image, or None to run it whole.

    With ``remat``, in stages cut at `REMAT_SPLITS`, each but the last in
    strips of about ``pixels`` (0: `REMAT_PIXELS`); without, only images above
    `MAX_PIXELS` (huge style images) go in strips, all of the network.
    """
    if remat:
        return dict(pixels=pixels or REMAT_PIXELS, splits=REMAT_SPLITS)
    return dict(pixels=STRIP_PIXELS) if image_shape[0] * image_shape[1] > MAX_PIXELS else None
