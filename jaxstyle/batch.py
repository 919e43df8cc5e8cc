"""Many images at once: vmapped batches and one-program hyper-parameter sweeps.

`optimize._chunk` optimises one image. Here it is `jax.vmap`-ed over a batch
and compiled once with `jax.jit`, and the batch axis is split over the devices
of a `sharding.batch_mesh` (one CPU, 8 GPUs or a TPU slice run the same code):

- `stylize_batch`: many content images, one style. Each image has its own
  content targets, loss normalisers and seed (vmapped); the style targets are
  shared (``in_axes=None``) unless ``preserve_colors`` makes them depend on
  the content.
- `sweep`: one content image, a grid of loss weights, learning rates or
  seeds. Content and style targets are shared; the weights, the starting
  image and the optimiser state are vmapped, so the whole grid is one program.

Items are independent: item ``i`` of a batch is `optimize.stylize` run alone
with the same config and seed, equal up to the order of float32 sums (which
Adam can amplify at pixels whose gradient is near its ``eps``; docs/batch.md). Coarse-to-fine
scales are run one after the other outside the compiled program, as
`stylize` does. Masks and resuming are single-image features
(`optimize.stylize`).

A batch must share one output shape. `stylize_batch` groups its inputs by the
shapes they get at each scale and runs every group in batches of
``batch_size``, padding the last batch (and any batch, to a multiple of the
device count) by repeating its last item, so one compiled program serves a
whole group. The command line first brings images of similar aspect ratio to
one shape (`batch_io.bucket_shape`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxstyle import color, losses, optimize, sharding, vgg
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError
from jaxstyle.optimize import CHUNK, Network, NonFiniteLoss

# Fields of `StylizeConfig` that may differ between the items of one program:
# they enter it as traced arrays (loss weights, Adam's learning rate in the
# optimiser state) or only change the starting image (the seed).
SWEEPABLE = ("content_weight", "style_weight", "tv_weight", "lr", "seed",
             "content_layer_weights", "style_layer_weights")


@dataclasses.dataclass(frozen=True)
class BatchProgress:
    """What `stylize_batch` and `sweep` report after every chunk of `CHUNK` steps.

    Attributes:
      items: indices (into the contents, or the grid points) of the batch's real items.
      step: steps done so far by this batch, over all scales.
      steps: steps of the whole run of this batch.
      losses: objective of each item at the start of its last step, (len(items),).
      images: the current outputs (averages when averaging), (batch, h, w, 3)
        device array split over the mesh's devices; rows from ``len(items)``
        on are padding.
      elapsed: seconds since the call started (compilation included).
    """

    items: tuple[int, ...]
    step: int
    steps: int
    losses: np.ndarray
    images: jax.Array
    elapsed: float


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """One finished batch: ``images[j]`` is the output of item ``items[j]``.

    An item whose loss became NaN or Inf gets its `NonFiniteLoss` (which holds
    its last finite image) instead of an array; the other items are unaffected.
    """

    items: tuple[int, ...]
    images: list[np.ndarray | NonFiniteLoss]


def stylize_batch(contents: Sequence[np.ndarray | jax.Array], style: np.ndarray | jax.Array | Sequence,
                  network: Network, config: StylizeConfig = StylizeConfig(), *,
                  seeds: Sequence[int] | None = None, init: np.ndarray | None = None,
                  batch_size: int | None = None, mesh: Mesh | None = None,
                  callback: Callable[[BatchProgress], None] | None = None) -> list[np.ndarray | NonFiniteLoss]:
    """Paint every content image in the style of ``style``, as vmapped batches.

    Args:
      contents: RGB in [0, 1], each (h_i, w_i, 3), any sizes.
      style: one style image or a list of them (blended), as in `optimize.stylize`.
      network: the VGG and its weights.
      config: the settings, shared by all items; see `StylizeConfig`.
      seeds: one seed per content image (noise initialisation); default
        ``config.seed`` for all.
      init: a starting image for all items instead of ``config.init``.
      batch_size: items per compiled program (default: all images of one
        output shape); rounded up to a multiple of the device count.
      mesh: a one-axis mesh whose devices the batch is split over (default
        `sharding.batch_mesh()`: all of this process's devices).
      callback: called with a `BatchProgress` after every chunk of steps.
    Returns:
      One output per content image, in order: RGB in [0, 1], float32
      (h_out, w_out, 3), equal to ``optimize.stylize(contents[i], style,
      network, config.replace(seed=seeds[i]))``; or that item's
      `NonFiniteLoss` if its loss became NaN or Inf.
    Raises:
      UsageError: no contents, seeds or batch size that do not fit, a layer
        name the network lacks, blend weights that do not fit the styles.
    """
    results: list[Any] = [None] * len(contents)
    for done in stylize_batch_iter(contents, style, network, config, seeds=seeds, init=init,
                                   batch_size=batch_size, mesh=mesh, callback=callback):
        for i, image in zip(done.items, done.images):
            results[i] = image
    return results


def stylize_batch_iter(contents: Sequence[np.ndarray | jax.Array], style, network: Network,
                       config: StylizeConfig = StylizeConfig(), *, seeds: Sequence[int] | None = None,
                       init: np.ndarray | None = None, batch_size: int | None = None, mesh: Mesh | None = None,
                       callback: Callable[[BatchProgress], None] | None = None) -> Iterator[BatchResult]:
    """`stylize_batch`, yielding each `BatchResult` as soon as its batch is done.

    The command line writes each batch's files while the next one runs, so an
    interrupted run keeps everything finished so far. Arguments as `stylize_batch`.
    """
    if len(contents) == 0:
        raise UsageError("no content images were given")
    seeds = [config.seed] * len(contents) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(contents):
        raise UsageError(f"{len(seeds)} seeds were given for {len(contents)} content images; give one per image")
    contents = [_checked_image(c, f"content image {i}") for i, c in enumerate(contents)]
    configs = [config.replace(seed=s) for s in seeds]
    # Group by the shape of every scale, so each group is one compiled program.
    sizes = optimize.scale_sizes(config)
    groups: dict[tuple, list[int]] = {}
    for i, content in enumerate(contents):
        groups.setdefault(tuple(optimize.output_shape(content.shape, s) for s in sizes), []).append(i)
    run = _Runner(style, network, config, init=init, mesh=mesh, callback=callback)
    for members in groups.values():
        size = _batch_size(batch_size, len(members), run.devices)
        for start in range(0, len(members), size):
            items = tuple(members[start:start + size])
            outputs = run([contents[i] for i in items], [configs[i] for i in items], items,
                          pad_to=size, share_content=False)
            yield BatchResult(items, outputs)


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """All combinations of a grid, the last key varying fastest.

    >>> grid_points({"style_weight": [1, 10], "seed": [0, 1]})
    [{'style_weight': 1, 'seed': 0}, {'style_weight': 1, 'seed': 1}, {'style_weight': 10, 'seed': 0}, {'style_weight': 10, 'seed': 1}]
    """
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def sweep(content: np.ndarray | jax.Array, style, network: Network, config: StylizeConfig = StylizeConfig(), *,
          grid: Mapping[str, Sequence[Any]], init: np.ndarray | None = None, batch_size: int | None = None,
          mesh: Mesh | None = None,
          callback: Callable[[BatchProgress], None] | None = None) -> list[tuple[dict[str, Any], np.ndarray | NonFiniteLoss]]:
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
      grid: field name -> values, for fields in `SWEEPABLE`
        (``content_weight``, ``style_weight``, ``tv_weight``, ``lr``, ``seed``),
        e.g. ``{"style_weight": [1e2, 1e4, 1e6], "tv_weight": [0, 2]}``.
      init, batch_size, mesh, callback: as in `stylize_batch`; callback's
        ``items`` are indices of grid points.
    Returns:
      ``[(point, image), ...]`` in `grid_points` order, where ``point`` maps
      each grid field to its value and ``image`` equals
      ``optimize.stylize(content, style, network, config.replace(**point))``
      (or is that point's `NonFiniteLoss`).
    Raises:
      UsageError: an empty grid or value list, a field that cannot be swept,
        an out-of-range value, or sweeping ``seed`` when ``config.init`` is
        not "noise" (the seed would change nothing).
    """
    configs = check_grid(config, grid, init=init)
    points = grid_points(grid)
    content = _checked_image(content, "the content image")
    run = _Runner(style, network, config, init=init, mesh=mesh, callback=callback)
    size = _batch_size(batch_size, len(points), run.devices)
    results: list[Any] = []
    for start in range(0, len(points), size):
        items = tuple(range(start, min(start + size, len(points))))
        results += run([content], [configs[i] for i in items], items, pad_to=size, share_content=True)
    return list(zip(points, results))


def check_grid(config: StylizeConfig, grid: Mapping[str, Sequence[Any]], *,
               init: np.ndarray | None = None) -> list[StylizeConfig]:
    """Refuse a sweep grid that cannot run, before any compute; return the config of each point.

    Raises:
      UsageError: as `sweep` says.
    """
    if not grid:
        raise UsageError("the sweep grid is empty; give at least one setting and its values")
    for name, values in grid.items():
        if name not in SWEEPABLE:
            raise UsageError(f"cannot sweep `{name}`; sweepable settings are {', '.join(SWEEPABLE)}")
        if len(values) == 0:
            raise UsageError(f"`{name}` has no values to sweep")
    if "seed" in grid and len(grid["seed"]) > 1 and init is None and config.init != "noise":
        raise UsageError(f"sweeping `seed` changes nothing with init {config.init!r}; use init 'noise'")
    return [config.replace(**point) for point in grid_points(grid)]  # validates every value


def _checked_image(image, what: str) -> jax.Array:
    if np.ndim(image) != 3 or np.shape(image)[-1] != 3:
        raise UsageError(f"{what} must be an RGB array (h, w, 3), got shape {np.shape(image)}")
    return jnp.asarray(image, jnp.float32)


def _batch_size(batch_size: int | None, n: int, devices: int) -> int:
    """Items per program: ``batch_size`` (default ``n``) rounded up to a multiple of the device count."""
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"`batch_size` must be at least 1, got {batch_size}")
    size = min(batch_size or n, n)
    return math.ceil(size / devices) * devices


def _batch_chunk(model: vgg.VGG, params, images: jax.Array, states, ema_states, targets: losses.Targets,
                 weights: losses.Weights, n: jax.Array, *, optimizer: str, ema_decay: float,
                 content_axis: int | None, style_axis: int | None, mesh: Mesh):
    """`optimize._chunk` vmapped over the leading axis of the images, states and weights.

    ``content_axis``/``style_axis`` are 0 where each item has its own content
    activations / style targets, None where all items share them. The
    batch axis is split over ``mesh``.
    """
    target_axes = losses.Targets(content=content_axis, style=style_axis, masks=None, kind=targets.kind)

    def chunk(params, image, state, ema_state, targets, weights, n):
        return optimize._chunk(model, params, image, state, ema_state, targets, weights, n,
                               optimizer=optimizer, ema_decay=ema_decay)

    out = jax.vmap(chunk, in_axes=(None, 0, 0, 0, target_axes, 0, None))(
        params, images, states, ema_states, targets, weights, n)
    # Pin the outputs to the inputs' layout, so that the next chunk's call hits the same compiled program.
    return jax.lax.with_sharding_constraint(out, sharding.batch_sharding(mesh))


_run_batch_chunk = jax.jit(_batch_chunk,
                           static_argnames=("model", "optimizer", "ema_decay", "content_axis", "style_axis", "mesh"),
                           donate_argnames=("images", "states", "ema_states"))


def _stack(trees: Sequence[Any], size: int) -> Any:
    """Stack pytrees along a new leading axis, padded to ``size`` by repeating the last one."""
    trees = list(trees) + [trees[-1]] * (size - len(trees))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree: Any, n: int) -> list[Any]:
    return [jax.tree.map(lambda x: x[i], tree) for i in range(n)]


class _Runner:
    """Runs batches of items that share a style and every non-sweepable setting."""

    def __init__(self, style, network: Network, config: StylizeConfig, *, init, mesh: Mesh | None,
                 callback: Callable[[BatchProgress], None] | None):
        self.styles = [jnp.asarray(s) for s in (style if isinstance(style, (list, tuple)) else [style])]
        self.network = network
        self.model = optimize.model_for_config(network, config)
        optimize.check_layers(config, self.model)
        optimize.check_inputs(config, self.styles, None)
        blend = np.asarray(config.style_blend or [1.0] * len(self.styles), np.float32)
        self.blend = blend / blend.sum()
        self.config = config
        self.init = config.init if init is None else init
        if isinstance(self.init, str) and self.init not in ("content", "noise"):
            raise UsageError(f"`init` must be 'content', 'noise' or an image array, got {self.init!r}")
        self.mesh = sharding.batch_mesh() if mesh is None else mesh
        if len(self.mesh.axis_names) != 1:
            raise UsageError(f"the mesh must have one axis (the batch), got axes {self.mesh.axis_names}")
        self.devices = self.mesh.devices.size
        self.params = sharding.replicate(network.params, self.mesh)
        self.callback = callback
        self.start = time.perf_counter()

    def _targets(self, content: jax.Array, hw: tuple[int, int], size: int):
        """Content at this scale, and its targets, exactly as `optimize.stylize` computes them."""
        config = self.config
        content_k, styles_k = optimize._prepare_colors(config, optimize.resize(content, hw), self.styles)
        styles_k = [optimize.resize(s, optimize.output_shape(s.shape, round(size * config.style_scale)))
                    for s in styles_k]
        targets = optimize.compute_targets(self.model, self.network.params, content_k, tuple(styles_k),
                                           jnp.asarray(self.blend), content_layers=tuple(config.content_layers),
                                           style_layers=tuple(config.style_layers), kind=config.style_loss)
        return content_k, targets

    def __call__(self, contents: list[jax.Array], configs: list[StylizeConfig], items: tuple[int, ...], *,
                 pad_to: int, share_content: bool) -> list[np.ndarray | NonFiniteLoss]:
        config, n_real, mesh = self.config, len(configs), self.mesh
        # The items share their shape at every scale, so one check covers them all.
        optimize.check_sizes(config, self.model, contents[0].shape, [s.shape for s in self.styles])
        sizes = optimize.scale_sizes(config)
        total = config.steps * len(sizes)
        # Style targets depend on the content only through colour preservation.
        share_style = share_content or config.preserve_colors == "none"
        images = states = emas = None  # per-item lists between scales
        failures: dict[int, NonFiniteLoss] = {}
        for k, size in enumerate(sizes):
            hw = optimize.output_shape(contents[0].shape, size)
            prepared = [self._targets(c, hw, size) for c in contents]
            content_ks = [prepared[0][0]] * n_real if share_content else [p[0] for p in prepared]
            targets = [prepared[0][1]] * n_real if share_content else [p[1] for p in prepared]
            weights = [optimize.loss_weights(c, t, self.blend) for c, t in zip(configs, targets)]
            if images is None:
                images = [optimize.initial_image(self.init, ck, c.seed) for ck, c in zip(content_ks, configs)]
                states = [optimize.init_state(c.optimizer, im, c.lr) for im, c in zip(images, configs)]
            else:
                images, states = zip(*[_upsample(config, im, st, hw) for im, st in zip(images, states)])
            if config.ema_decay:
                if emas is None:
                    emas = [jax.tree.map(jnp.array, optax.ema(config.ema_decay).init(im)) for im in images]
                else:
                    emas = [e._replace(ema=optimize._resize_field(e.ema, hw)) for e in emas]

            batch_images = sharding.shard_batch(_stack(images, pad_to), mesh)
            batch_states = sharding.shard_batch(_stack(states, pad_to), mesh)
            batch_emas = None if emas is None else sharding.shard_batch(_stack(emas, pad_to), mesh)
            first = targets[0]
            content_t = first.content if share_content else sharding.shard_batch(
                _stack([t.content for t in targets], pad_to), mesh)
            style_t = first.style if share_style else sharding.shard_batch(
                _stack([t.style for t in targets], pad_to), mesh)
            batch_targets = losses.Targets(
                content=sharding.replicate(content_t, mesh) if share_content else content_t,
                style=sharding.replicate(style_t, mesh) if share_style else style_t,
                masks=first.masks, kind=first.kind)
            batch_weights = sharding.shard_batch(_stack(weights, pad_to), mesh)

            done = 0
            while done < config.steps:
                n = min(CHUNK, config.steps - done)
                last_good = jnp.array(batch_images)  # a copy: `batch_images` is donated
                batch_images, batch_states, batch_emas, history = _run_batch_chunk(
                    self.model, self.params, batch_images, batch_states, batch_emas, batch_targets,
                    batch_weights, jnp.int32(n), optimizer=config.optimizer, ema_decay=config.ema_decay,
                    content_axis=None if share_content else 0, style_axis=None if share_style else 0, mesh=mesh)
                history = np.asarray(history)[:n_real, :n]
                finite = np.isfinite(history).all(1) & np.asarray(
                    jnp.isfinite(batch_images).all(axis=(1, 2, 3)))[:n_real]
                for j in np.flatnonzero(~finite):
                    if j not in failures:
                        failures[j] = NonFiniteLoss(
                            f"the loss of item {items[j]} became NaN or Inf between steps {k * config.steps + done} "
                            f"and {k * config.steps + done + n}; lower --lr or the loss weights",
                            np.asarray(last_good[j]), k * config.steps + done)
                done += n
                if self.callback is not None:
                    current = batch_images if not config.ema_decay else jax.vmap(
                        lambda e: optimize.averaged(e, config.ema_decay))(batch_emas)
                    self.callback(BatchProgress(items=items, step=k * config.steps + done, steps=total,
                                                losses=history[:, -1], images=current,
                                                elapsed=time.perf_counter() - self.start))
            images = _unstack(batch_images, n_real)
            states = _unstack(batch_states, n_real)
            emas = None if batch_emas is None else _unstack(batch_emas, n_real)

        outputs: list[Any] = []
        for j in range(n_real):
            if j in failures:
                outputs.append(failures[j])
                continue
            result = jnp.clip(optimize._output(images[j], None if emas is None else emas[j], config), 0.0, 1.0)
            if config.preserve_colors == "luminance":
                content = contents[0] if share_content else contents[j]
                result = color.combine_luminance(result, optimize.resize(content, result.shape[:2]))
            outputs.append(np.asarray(result))
        return outputs


def _upsample(config: StylizeConfig, image: jax.Array, state, hw: tuple[int, int]):
    """Coarse to fine for one item, exactly as `optimize.stylize` does between scales."""
    image = optimize.resize(image, hw)
    if config.optimizer == "adam":
        state = jax.tree.map(lambda a: optimize._resize_field(a, hw) if a.ndim == 3 else a, state)
        state = state._replace(inner_state=(state.inner_state[0]._replace(
            nu=jnp.maximum(state.inner_state[0].nu, 0.0)), *state.inner_state[1:]))
    else:
        state = optimize.init_state(config.optimizer, image, config.lr)
    return image, state
