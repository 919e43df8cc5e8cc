"""Many images at once: a batch of photos, or one photo and a grid of settings, as vmapped programs.

Both build the items of the one driver, `optimize.run`, and leave the
optimisation to it:

- `stylize_batch`: many content images, one style. Each image is an item
  with its own content targets, loss normalisers and seed; the style targets
  are shared unless ``preserve_colors`` makes them depend on the content.
- `sweep`: one content image, a grid of loss weights, learning rates or
  seeds. The content and style targets (and masks) are shared; the weights,
  the starting image and the optimiser state are per item, so the whole grid
  is one program.

Items are independent: item ``i`` of a batch is `optimize.stylize` run alone
with the same config and seed, equal up to the order of float32 sums.

A program must share one output shape. `stylize_batch` groups its inputs by
the shapes they get at each scale and runs every group in programs of
``batch_size`` items, padding the last (and any program, to a multiple of the
device count) by repeating its last item, so one compiled program serves a
whole group. The command line first brings images of similar aspect ratio to
one shape (`batch_io.bucket_shape`). By default the items are split over all
of this process's devices (`sharding.batch()`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from jaxstyle import optimize, plan, sharding
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError
from jaxstyle.optimize import Checkpoint, Network, NonFiniteLoss, Progress


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """One finished program: ``images[j]`` is the output of item ``items[j]``.

    An item whose loss became NaN or Inf gets its `NonFiniteLoss` (which holds
    its last finite image) instead of an array; the other items are unaffected.
    """

    items: tuple[int, ...]
    images: list[np.ndarray | NonFiniteLoss]


def stylize_batch(contents: Sequence[np.ndarray], style, network: Network, config: StylizeConfig = StylizeConfig(),
                  **options: Any) -> list[np.ndarray | NonFiniteLoss]:
    """Paint every content image in the style of ``style``, as vmapped programs.

    Args:
      contents, style, network, config: as in `stylize_batch_iter`.
      options: the keyword arguments of `stylize_batch_iter`.
    Returns:
      One output per content image, in order: RGB in [0, 1], float32
      (h_out, w_out, 3), equal to ``optimize.stylize(contents[i], style,
      network, config.replace(seed=seeds[i]))``; or that item's
      `NonFiniteLoss` if its loss became NaN or Inf.
    """
    results: list[Any] = [None] * len(contents)
    for done in stylize_batch_iter(contents, style, network, config, **options):
        for i, image in zip(done.items, done.images):
            results[i] = image
    return results


def stylize_batch_iter(contents: Sequence[np.ndarray], style, network: Network,
                       config: StylizeConfig = StylizeConfig(), *, seeds: Sequence[int] | None = None,
                       init: np.ndarray | None = None, batch_size: int | None = None,
                       layout: sharding.Layout | None = None, callback: Callable[[Progress], None] | None = None,
                       resume: Checkpoint | None = None) -> Iterator[BatchResult]:
    """`stylize_batch`, yielding each program's `BatchResult` as soon as it is done.

    The command line writes each program's files while the next one runs, so an
    interrupted run keeps everything finished so far.

    Args:
      contents: RGB in [0, 1], each (h_i, w_i, 3), any sizes.
      style: one style image or a list of them (blended), as in `optimize.stylize`.
      network: the VGG and its weights.
      config: the settings, shared by all items; see `StylizeConfig`.
      seeds: one seed per content image (noise initialisation); default
        ``config.seed`` for all.
      init: a starting image for all items instead of ``config.init``.
      batch_size: items per program (default: all images of one output shape);
        rounded up to a multiple of the layout's device count.
      layout: how programs are compiled (default `sharding.batch()`: the items
        split over all of this process's devices).
      callback: called with a `Progress` (``items``: indices into ``contents``)
        every `optimize.CHUNK` steps.
      resume: continue from a checkpoint of a program of exactly these
        contents (all of one shape, at most ``batch_size``).
    Raises:
      UsageError: no contents, seeds or batch size that do not fit, a layer
        name the network lacks, blend weights that do not fit the styles.
    """
    if len(contents) == 0:
        raise UsageError("no content images were given")
    seeds = [config.seed] * len(contents) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(contents):
        raise UsageError(f"{len(seeds)} seeds were given for {len(contents)} content images; give one per image")
    layout = layout or sharding.batch()
    groups: dict[tuple, list[int]] = {}  # by the shape of every scale: each group is one compiled program
    for i, content in enumerate(contents):
        if np.ndim(content) != 3 or np.shape(content)[-1] != 3:
            raise UsageError(f"content image {i} must be an RGB array (h, w, 3), got shape {np.shape(content)}")
        shapes = tuple(plan.output_shape(np.shape(content), s) for s in plan.scale_sizes(config))
        groups.setdefault(shapes, []).append(i)
    if resume is not None and (len(groups) > 1 or len(contents) > (batch_size or len(contents))):
        raise UsageError("`resume` continues one program: give the contents of that checkpoint's program only")
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    for members in groups.values():
        size = plan.program_size(len(members), batch_size, layout.devices)
        for program in plan.programs(len(members), batch_size, layout.devices):
            items = tuple(members[j] for j in program)
            yield BatchResult(items, optimize.run(
                [contents[i] for i in items], styles, network, [config.replace(seed=seeds[i]) for i in items],
                ids=items, init=init, layout=layout, callback=callback, size=size, resume=resume))


def sweep(content: np.ndarray, style, network: Network, config: StylizeConfig = StylizeConfig(), *,
          grid: Mapping[str, Sequence[Any]], **options: Any) -> list[tuple[dict[str, Any], np.ndarray | NonFiniteLoss]]:
    """Stylize one content image for every combination of hyper-parameter values, as one program.

    The grid points are the items of one vmapped, compiled program (split
    into several programs only if ``batch_size`` asks for it): the loss
    weights, the learning rate and the starting image are per-item arrays,
    the content and style targets are computed once and shared.

    Args:
      content: RGB in [0, 1], (h, w, 3).
      style: one style image or a list of them, as in `optimize.stylize`.
      network: the VGG and its weights.
      config: the settings of every point, except those in ``grid``.
      grid: setting name -> values, for settings in `plan.SWEEPABLE`,
        e.g. ``{"style_weight": [1e2, 1e4, 1e6], "tv_weight": [0, 2]}``.
      options: the keyword arguments of `sweep_iter`.
    Returns:
      ``[(point, image), ...]`` in `plan.grid_points` order, where ``point`` maps
      each grid setting to its value and ``image`` equals
      ``optimize.stylize(content, style, network, config.replace(**point))``
      (or is that point's `NonFiniteLoss`).
    Raises:
      UsageError: as `plan.check_grid` says.
    """
    results: list[Any] = []
    for done in sweep_iter(content, style, network, config, grid=grid, **options):
        results += done.images
    return list(zip(plan.grid_points(grid), results))


def sweep_iter(content: np.ndarray, style, network: Network, config: StylizeConfig = StylizeConfig(), *,
               grid: Mapping[str, Sequence[Any]], init: np.ndarray | None = None,
               masks: Sequence[tuple[np.ndarray, np.ndarray]] | None = None, batch_size: int | None = None,
               layout: sharding.Layout | None = None, callback: Callable[[Progress], None] | None = None,
               start: int = 0, resume: Checkpoint | None = None) -> Iterator[BatchResult]:
    """`sweep`, yielding each program's `BatchResult` (``items``: indices of grid points) when it is done.

    Args:
      content, style, network, config, grid: as in `sweep`.
      init: a starting image for all points instead of ``config.init``.
      masks: (content mask, style mask) pairs, one per style image, as in
        `optimize.run`: the content image's masks apply to every point.
      batch_size: grid points per program (default: the whole grid in one).
      layout: how programs are compiled (default `sharding.batch()`).
      callback: called with a `Progress` every `optimize.CHUNK` steps.
      start: the first grid point to compute, at the start of a program
        (the points before it are done); ``resume`` continues that program.
    """
    configs = plan.check_grid(config, grid, init_image=init is not None)
    layout = layout or sharding.batch()
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    size = plan.program_size(len(configs), batch_size, layout.devices)
    if start % size:
        raise UsageError(f"`start` {start} is not the start of a program of {size} points")
    for program in plan.programs(len(configs), batch_size, layout.devices):
        if program.start < start:
            continue
        items = tuple(program)
        yield BatchResult(items, optimize.run([content], styles, network, [configs[i] for i in items], ids=items,
                                              init=init, masks=masks, layout=layout, callback=callback, size=size,
                                              resume=resume if program.start == start else None))
