"""The driver: one loop over scales and chunks of steps, for every run.

Every run optimises a batch of *items* along a leading axis: a single image
is a batch of one (`stylize`), a batch of photos or the points of a sweep
are more (`jaxstyle.batch`, built on `run`). For each scale, coarse to fine,
the driver

1. computes the targets (`step.compute_targets` pieces) once, shared by the
   items where they can be, and each item's loss weights;
2. starts the images and optimiser states (`step.initial_image`,
   `step.init_state`), or carries them up from the previous scale
   (`step.resize_state`), or takes them from a checkpoint;
3. runs chunks of at most `step.CHUNK` steps, compiled by the caller's
   `sharding.Layout`, and between chunks checks every item's loss and calls
   the callback with a `Progress` record.

It never prints and never touches a file: the command line's reporter does.

One rule for a loss that becomes NaN or Inf, in every entry point: that
item's result is a `NonFiniteLoss` holding its last image with a finite
loss, the other items go on, and the run stops when every item has failed
(`stylize` raises the error of its one item).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle import color, losses, plan, sharding, step, vgg
from jaxstyle.temporal import References
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import JaxstyleError, UsageError
from jaxstyle.step import CHUNK, Network  # noqa: F401 (the driver's public vocabulary)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where a program stands: enough to continue it exactly (`run`'s ``resume``).

    Attributes:
      scale: index of the current scale in `plan.scale_sizes`.
      step: steps done at that scale.
      images: the current iterates, (items, h, w, 3) float32.
      states: the optimiser states, stacked along a leading item axis.
      emas: the averages' states, stacked (None without averaging).
    """

    scale: int
    step: int
    images: Any
    states: Any
    emas: Any


@dataclasses.dataclass(frozen=True)
class Progress:
    """What `run` reports every ``report_every`` steps and at the end of each scale.

    Attributes:
      items: the ids of the program's real items (`run`'s ``ids``).
      step: steps done so far, over all scales.
      steps: steps in the whole run.
      scale: index of the current scale; scales: how many there are.
      losses: objective of each item at the start of each step since the
        last report, (len(items), n) float32.
      terms: the weighted "content", "style" and "tv" terms of each item now (and "temporal" for a video
        frame), (len(items),); ``"style:<layer>"``: each style layer's share of "style".
      images: the current pictures (averages when averaging), RGB in [0, 1],
        a device array (program size, h, w, 3); rows from ``len(items)`` on are padding.
      elapsed: seconds since the run started (compilation included).
      checkpoint: the state to continue from (`run`'s ``resume``).
      failed: positions (in ``items``) of the items whose loss became NaN or Inf.
    """

    items: tuple[int, ...]
    step: int
    steps: int
    scale: int
    scales: int
    losses: np.ndarray
    terms: dict[str, np.ndarray]
    images: jax.Array
    elapsed: float
    checkpoint: Checkpoint
    failed: frozenset[int] = frozenset()


class NonFiniteLoss(JaxstyleError):
    """The loss of an item became NaN or Inf; ``image`` is its last image whose loss was finite."""

    def __init__(self, message: str, image: np.ndarray, step: int):
        super().__init__(message)
        self.image = image
        self.step = step


@dataclasses.dataclass
class _Scale:
    """One scale of a run: what every item is compared with, and how its program is laid out."""

    content: jax.Array  # (items or 1, h, w, 3): the content as the optimisation sees it (colours prepared)
    targets: losses.Targets
    weights: losses.Weights
    axes: sharding.ItemAxes
    layout: sharding.Layout


def stylize(content: np.ndarray | jax.Array, style: np.ndarray | jax.Array | Sequence, network: Network,
            config: StylizeConfig = StylizeConfig(), *, init: str | np.ndarray | None = None,
            masks: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
            callback: Callable[[Progress], None] | None = None, report_every: int = CHUNK,
            resume: Checkpoint | None = None, layout: sharding.Layout | None = None) -> np.ndarray:
    """Paint ``content`` in the style of ``style`` (Gatys et al.): `run` with one item.

    Args:
      content: RGB in [0, 1], (h, w, 3), any size; resized to each scale's size.
      style: one style image or a list of them, RGB in [0, 1], (h', w', 3);
        each resized to the scale's size times ``config.style_scale``.
      network: the VGG and its weights (`Network(weights.model_for(meta), params)`).
      config: the settings; see `StylizeConfig`.
      init, masks, callback, report_every, resume, layout: as in `run`.
    Returns:
      The output image, RGB in [0, 1], float32 (h_out, w_out, 3).
    Raises:
      UsageError: a layer name the network lacks, or masks and blend weights
        that do not fit the style images.
      NonFiniteLoss: the loss became NaN or Inf (carries the last finite image).
    """
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    [result] = run([content], styles, network, [config], init=init, masks=masks, callback=callback,
                   report_every=report_every, resume=resume, layout=layout)
    if isinstance(result, NonFiniteLoss):
        raise result
    return result


def run(contents: Sequence[np.ndarray | jax.Array], styles: Sequence[np.ndarray | jax.Array], network: Network,
        configs: Sequence[StylizeConfig], *, ids: Sequence[int] | None = None,
        init: str | np.ndarray | Sequence[np.ndarray] | None = None,
        masks: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
        temporal: Sequence[References] | None = None, temporal_weight: float = 0.0,
        callback: Callable[[Progress], None] | None = None, report_every: int = CHUNK,
        resume: Checkpoint | None = None, layout: sharding.Layout | None = None,
        size: int | None = None) -> list[np.ndarray | NonFiniteLoss]:
    """Optimise a batch of items as one program, coarse to fine.

    Args:
      contents: one content image per item, or one shared by all items (a
        sweep); RGB in [0, 1], all of one shape at every scale.
      styles: the style images, shared by all items (blended with ``style_blend``).
      network: the VGG and its weights.
      configs: one config per item; they may differ only in `plan.SWEEPABLE` fields.
      ids: what the items are called in `Progress.items` (default 0, 1, ...).
      init: overrides ``config.init`` with an image array (resized to each item,
        at the first scale; `plan.continuing` gives the run that continues a
        finished smaller output instead, as the command line's ``--init`` does),
        or a list of them, one per item (a video's frames, `jaxstyle.video`).
      masks: optional, one ``(content_mask, style_mask)`` pair per style image,
        each (h, w) in [0, 1]: the region of the output that takes that style,
        and the region of the style image it is taken from (shared by all items).
      temporal: for the frames of a video, each item's references (earlier
        stylized frames warped onto it, and their masks), at any size: they
        are resized to each scale. The objective gains ``temporal_weight``
        times `jaxstyle.temporal.references_loss`.
      callback: called with a `Progress` every ``report_every`` steps and at
        the end of each scale.
      report_every: steps between callbacks; steps run in chunks of at most
        `CHUNK` that end at these points.
      resume: continue from a `Progress.checkpoint` of an earlier run of the
        same items, inputs and configs.
      layout: how the program is compiled (`sharding.single()` by default;
        `sharding.batch()`, `sharding.rows()`).
      size: items per program (default: the item count, rounded up to the
        layout's device count); the batch is padded by repeating its last item.
    Returns:
      One output per item, RGB in [0, 1], float32 (h_out, w_out, 3), or that
      item's `NonFiniteLoss`. Item ``i`` equals a run of that item alone, up to
      the order of float32 sums.
    Raises:
      UsageError: inputs or configs that do not fit (before any compute).
    """
    layout = layout or sharding.single()
    styles = [jnp.asarray(s, jnp.float32) for s in styles]
    contents = [jnp.asarray(c, jnp.float32) for c in contents]
    model = step.configured(network.model, configs[0]) if configs else network.model
    _check(contents, styles, model, configs, init, masks, temporal, layout)
    config = configs[0]
    params = layout.share(jax.device_put(network.params))  # not copied again at every chunk
    size = size or plan.program_size(len(configs), None, layout.devices)
    if size < len(configs) or size % layout.devices:
        raise UsageError(f"a program of {len(configs)} items cannot have {size} places; give at least as many, "
                         f"a multiple of the {layout.devices} devices")
    loop = _Loop(model, params, configs, tuple(range(len(configs)) if ids is None else ids), size,
                 callback, report_every, time.perf_counter())
    carry = None
    for k, scale in enumerate(plan.scale_sizes(config)):
        if resume is not None and k < resume.scale:
            continue
        loop.model = model = step.configured(network.model, config, scale)  # whole or in strips at this scale
        goal = _scale(model, params, contents, styles, configs, masks, scale, layout, size,
                      temporal, temporal_weight)
        carry, done = _start(loop, goal, carry, resume if resume is not None and k == resume.scale else None,
                             config.init if init is None else init)
        carry = loop.steps(goal, carry, k, done)
        if len(loop.failures) == len(configs):
            break
    return _finish(loop, carry, contents, config)


def _check(contents, styles, model: vgg.VGG, configs: Sequence[StylizeConfig], init, masks, temporal,
           layout) -> None:
    """Refuse inputs that do not fit, before any compute (the same checks the command line makes)."""
    if not configs or len(contents) not in (1, len(configs)):
        raise UsageError(f"{len(contents)} content images for {len(configs)} items; give one, or one per item")
    config = configs[0]
    others = {f.name for c in configs for f in dataclasses.fields(c)
              if f.name not in plan.SWEEPABLE and getattr(c, f.name) != getattr(config, f.name)}
    if others:
        raise UsageError(f"the items of one program may differ only in {', '.join(plan.SWEEPABLE)}, "
                         f"not in {', '.join(sorted(others))}")
    for i, image in enumerate((*contents, *styles)):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise UsageError(f"image {i + 1} must be an RGB array (h, w, 3), got shape {image.shape}")
    shapes = {tuple(plan.output_shape(c.shape, s) for s in plan.scale_sizes(config)) for c in contents}
    if len(shapes) > 1:
        raise UsageError("the content images of one program must have one shape at every scale")
    if isinstance(init, str) and init not in ("content", "noise"):
        raise UsageError(f"`init` must be 'content', 'noise' or an image array, got {init!r}")
    if isinstance(init, (list, tuple)) and len(init) != len(configs):
        raise UsageError(f"{len(init)} starting images for {len(configs)} items; give one per item")
    if temporal is not None and (len(temporal) != len(configs)
                                 or len({np.shape(r.frames)[0] for r in temporal}) != 1):
        raise UsageError(f"{len(temporal)} temporal references for {len(configs)} items; give one per item, "
                         "each with the same number of frames")
    plan.check_layout(config, rows=layout.kind == "rows")
    plan.check_layers(config, model.blocks)
    plan.check_styles(config, len(styles), None if masks is None else len(masks))
    if masks is not None:
        for i, pair in enumerate(masks):
            for what, m in zip(("content", "style"), pair):
                if np.ndim(m) != 2:
                    raise UsageError(f"{what} mask {i + 1} must be a 2-D (h, w) array, got shape {np.shape(m)}")
        plan.check_mask_coverage([np.asarray(c) for c, _ in masks])
    plan.check_sizes(config, model.blocks, contents[0].shape, [s.shape for s in styles])


def _blend(config: StylizeConfig, n_styles: int) -> np.ndarray:
    """The style blend weights, summing to 1."""
    blend = np.asarray(config.style_blend or [1.0] * n_styles, np.float32)
    return blend / blend.sum()


def _scale(model: vgg.VGG, params, contents: list[jax.Array], styles: list[jax.Array],
           configs: Sequence[StylizeConfig], masks, scale: int, layout: sharding.Layout, size: int,
           temporal: Sequence[References] | None, temporal_weight: float) -> _Scale:
    """The targets and weights of every item at the scale of longest side ``scale``, laid out for the program."""
    config, blend = configs[0], _blend(configs[0], len(styles))
    hw = plan.output_shape(contents[0].shape, scale)
    prepared = [color.prepare(config.preserve_colors, step.resize(c, hw), styles) for c in contents]
    style_hw = [plan.output_shape(s.shape, plan.style_size(config, scale)) for s in styles]
    # Style targets depend on the content only through colour preservation.
    per_item_style = len(contents) > 1 and config.preserve_colors != "none"
    style_masks = None if masks is None else tuple(step.resize(m, shape) for (_, m), shape in zip(masks, style_hw))

    def style_of(styles_k):
        return step.style_targets(model, params, tuple(step.resize(s, shape) for s, shape in zip(styles_k, style_hw)),
                                  jnp.asarray(blend), style_masks, layers=tuple(config.style_layers),
                                  kind=config.style_loss, regions=masks is not None)

    style = [style_of(s) for _, s in (prepared if per_item_style else prepared[:1])]
    content = [step.content_targets(model, params, c, layers=tuple(config.content_layers)) for c, _ in prepared]
    region = (None,) if masks is None else step.region_masks(
        model, params, tuple(step.resize(m, hw) for m, _ in masks), layers=tuple(config.style_layers))
    weights = [step.loss_weights(c, losses.Targets(content[i if len(content) > 1 else 0],
                                                   style[i if len(style) > 1 else 0], region, config.style_loss),
                                 blend) for i, c in enumerate(configs)]
    if temporal is not None:
        weights = [w.replace(temporal=jnp.float32(temporal_weight)) for w in weights]
    axes = sharding.ItemAxes(content=0 if len(content) > 1 else None, style=0 if per_item_style else None)
    fitted = layout.fit(model, (*config.content_layers, *config.style_layers), hw[0])

    def laid_out(trees: list, axis: int | None) -> Any:
        """One tree shared by all items, or the items' trees stacked and padded to the program size."""
        return fitted.share(trees[0]) if axis is None else fitted.place(_pad(_stack(trees), size), ())

    targets = losses.Targets(content=laid_out(content, axes.content), style=laid_out(style, axes.style),
                             masks=fitted.share(region), kind=config.style_loss,
                             temporal=None if temporal is None else laid_out([_resized(r, hw) for r in temporal], 0))
    return _Scale(content=jnp.stack([c for c, _ in prepared]), targets=targets, weights=laid_out(weights, 0),
                  axes=axes, layout=fitted)


def _resized(references: References, hw: Sequence[int]) -> References:
    """A frame's temporal references at the scale of shape ``hw``."""
    frames = jnp.asarray(references.frames, jnp.float32)
    masks = jnp.asarray(references.masks, jnp.float32)
    if tuple(frames.shape[1:3]) == tuple(hw):
        return References(frames, masks)
    return References(jax.vmap(lambda f: step.resize(f, hw))(frames),
                      jnp.clip(jax.vmap(lambda m: step.resize_field(m[..., None], hw)[..., 0])(masks), 0.0, 1.0))


def _stack(trees: Sequence[Any]) -> Any:
    """Pytrees of one structure stacked along a new leading (item) axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _pad(tree: Any, size: int) -> Any:
    """Pad every leaf's leading (item) axis to ``size`` by repeating its last item."""
    def pad(x):
        x = jnp.asarray(x)
        return x if x.shape[0] == size else jnp.concatenate([x, jnp.repeat(x[-1:], size - x.shape[0], 0)])

    return jax.tree.map(pad, tree)


def _start(loop: "_Loop", goal: _Scale, carry, resume: Checkpoint | None, init) -> tuple[tuple, int]:
    """The images and optimiser states at the start of a scale (laid out), and the steps already done there."""
    config, configs = loop.configs[0], loop.configs
    done = 0
    if resume is not None:
        carry, done = (resume.images, resume.states, resume.emas), resume.step
    elif carry is None:
        own = isinstance(init, (list, tuple))  # one starting image per item
        images = [step.initial_image(init[i] if own else init, goal.content[i if len(goal.content) > 1 else 0], c.seed)
                  for i, c in enumerate(configs)]
        states = [step.init_state(config.optimizer, im, c.lr) for im, c in zip(images, configs)]
        carry = (jnp.stack(images), _stack(states), _stack([step.init_average(config.ema_decay, im) for im in images])
                 if config.ema_decay else None)
    else:  # coarse to fine: carry the images, the optimiser's and the average's state up to this scale
        hw = goal.content.shape[1:3]
        images = jax.vmap(lambda im: step.resize(im, hw))(carry[0])
        states = jax.vmap(lambda st, im: step.resize_state(config.optimizer, st, im, config.lr))(carry[1], images)
        emas = jax.vmap(lambda e: step.resize_average(config.ema_decay, e, hw))(carry[2]) if config.ema_decay else None
        carry = (images, states, emas)
    return goal.layout.place(_pad(carry, loop.size), tuple(goal.content.shape[1:])), done


@dataclasses.dataclass
class _Loop:
    """The chunk loop of one program: its steps, reports and failures."""

    model: vgg.VGG
    params: Any
    configs: Sequence[StylizeConfig]
    ids: tuple[int, ...]
    size: int
    callback: Callable[[Progress], None] | None
    report_every: int
    start: float
    failures: dict[int, NonFiniteLoss] = dataclasses.field(default_factory=dict)

    def steps(self, goal: _Scale, carry: tuple, k: int, done: int) -> tuple:
        """Run the scale's remaining steps in chunks; check the losses and report between them."""
        config, n_real = self.configs[0], len(self.configs)
        steps, before = plan.scale_steps(config)[k], plan.steps_before(config, k)
        pending = []  # per-step losses since the last report
        while done < steps:
            n = min(CHUNK, steps - done, self.report_every - done % self.report_every)
            last = jnp.array(carry[0][:n_real])  # a copy: the images are donated to the chunk
            *carry, history = goal.layout.run(self.model, self.params, *carry, goal.targets, goal.weights,
                                              jnp.int32(n), optimizer=config.optimizer, ema_decay=config.ema_decay,
                                              axes=goal.axes)
            history = np.asarray(history)[:n_real, :n]
            self._check_finite(history, carry[0], last, before + done, n)
            done += n
            pending.append(history)
            if len(self.failures) == n_real:
                break
            if self.callback is not None and (done % self.report_every == 0 or done == steps):
                self.callback(self._progress(goal, tuple(carry), k, done, np.concatenate(pending, axis=1)))
                pending = []
        return tuple(carry)

    def _check_finite(self, history: np.ndarray, images: jax.Array, last: jax.Array, at: int, n: int) -> None:
        """Record the items whose loss or image became NaN or Inf in this chunk, with their last finite image."""
        finite = np.isfinite(history).all(1) & np.asarray(jnp.isfinite(images).all(axis=(1, 2, 3)))[:len(history)]
        for j in np.flatnonzero(~finite):
            if j not in self.failures:
                who = "" if len(self.configs) == 1 else f" of item {self.ids[j]}"
                self.failures[j] = NonFiniteLoss(
                    f"the loss{who} became NaN or Inf between steps {at} and {at + n}; lower `lr` or the loss weights",
                    np.asarray(last[j]), at)

    def _progress(self, goal: _Scale, carry: tuple, k: int, done: int, history: np.ndarray) -> Progress:
        config, n_real = self.configs[0], len(self.configs)
        images = _current(carry[0], carry[2], config.ema_decay)
        terms = _report_terms(self.model, self.params, images, goal.targets, goal.weights, axes=goal.axes)
        return Progress(items=self.ids, step=plan.steps_before(config, k) + done, steps=plan.total_steps(config),
                        scale=k, scales=len(plan.scale_sizes(config)), losses=history,
                        terms={key: np.asarray(v)[:n_real] for key, v in terms.items()}, images=images,
                        elapsed=time.perf_counter() - self.start,
                        checkpoint=Checkpoint(k, done, *jax.tree.map(lambda x: jnp.array(x[:n_real]), carry)),
                        failed=frozenset(self.failures))


@functools.partial(jax.jit, static_argnames=("ema_decay",))
def _current(images: jax.Array, emas, ema_decay: float) -> jax.Array:
    """The pictures of a batch (a new array: the iterates are donated to the next chunk)."""
    return jnp.array(jax.vmap(lambda im, e: step.current(im, e, ema_decay))(images, emas))


@functools.partial(jax.jit, static_argnames=("model", "axes"))
def _report_terms(model: vgg.VGG, params, images, targets: losses.Targets, weights: losses.Weights, *,
                  axes: sharding.ItemAxes) -> dict[str, jax.Array]:
    """The loss terms of each item, for progress reports."""
    own, rebuild = axes.split(targets)
    return sharding.for_each_item(lambda im, c, s, t, w: step.report_terms(model, params, im, rebuild(c, s, t), w),
                                  (images, *own, weights))


def _finish(loop: _Loop, carry: tuple, contents: list[jax.Array], config: StylizeConfig) -> list:
    """Each item's output (colours restored), or its `NonFiniteLoss`."""
    pictures = jnp.clip(_current(carry[0], carry[2], config.ema_decay), 0.0, 1.0)
    outputs: list[Any] = []
    for j in range(len(loop.configs)):
        if j in loop.failures:
            outputs.append(loop.failures[j])
            continue
        content = step.resize(contents[j if len(contents) > 1 else 0], pictures.shape[1:3])
        outputs.append(np.asarray(color.finish(config.preserve_colors, pictures[j], content)))
    return outputs
