"""Style transfer as optimisation: optax updates the pixels of the output image.

The work is split so that each piece is a pure function of arrays:

- `content_and_style`: all the objective needs of the network, the content
  activations and the style statistics of an image; with ``remat``, computed
  strip by strip so that a step's backward pass holds one strip at a time.
- `compute_targets`: the content image's and style images' of these, once per scale.
- `_run_chunk`: up to `CHUNK` optimisation steps on device (`lax.fori_loop`),
  jit-compiled once per image shape and program options (optimiser, layers,
  style loss). Loss weights and the learning rate are traced arguments, so
  changing them never recompiles.
- `stylize`: the driver. It runs the scales (coarse to fine) and the chunks,
  and reports progress to an optional callback between chunks; it never prints.

Keeping pixels in [0, 1]:
  - Adam: projected gradient descent, i.e. clip after every update. Adam's
    steps are local and it keeps no curvature model, so projection is sound.
  - L-BFGS: a smooth quadratic penalty on pixels outside [0, 1] is added to the
    objective, and the image is clipped once at the end. Clipping inside the
    loop would change iterates behind the optimiser's back, so the secant pairs
    (s, y) it builds its curvature model from, and the line search's
    sufficient-decrease test, would describe a different function. A sigmoid
    reparameterisation would keep the problem smooth too, but saturates at
    black and white (common in photos) and bends the loss landscape. The
    penalty leaves the landscape inside the box untouched.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxstyle import color, losses, strips, vgg
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import JaxstyleError, UsageError

CHUNK = 10  # steps run on device between progress callbacks
RANGE_PENALTY = 1e3  # L-BFGS: weight of mean((x - clip(x, 0, 1))^2)
MIN_SCALE = 128  # first size of the automatic coarse-to-fine schedule


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where a run stands: enough to continue it exactly (see `stylize`'s ``resume``).

    Attributes:
      scale: index of the current scale in `scale_sizes`.
      step: steps done at that scale.
      image: the current iterate, (h, w, 3) float32.
      state: the optimiser state (a pytree of arrays).
      ema: the averaged image's state (None without averaging).
    """

    scale: int
    step: int
    image: Any
    state: Any
    ema: Any


@dataclasses.dataclass(frozen=True)
class Progress:
    """What `stylize` reports every ``report_every`` steps.

    Attributes:
      step: steps done so far, over all scales.
      steps: steps in the whole run.
      loss: objective at the start of the last step.
      losses: objective at the start of each step since the last report, (n,) float32.
      terms: the weighted content, style and total-variation terms now.
      image: the current output (the average when averaging), RGB in [0, 1],
        (h, w, 3), a device array at the current scale's size.
      elapsed: seconds since the run started (compilation included).
      checkpoint: the state to continue from (`stylize`'s ``resume``).
    """

    step: int
    steps: int
    loss: float
    losses: np.ndarray
    terms: dict[str, float]
    image: jax.Array
    elapsed: float
    checkpoint: Checkpoint


class NonFiniteLoss(JaxstyleError):
    """The loss became NaN or Inf; ``image`` is the last image whose loss was finite."""

    def __init__(self, message: str, image: np.ndarray, step: int):
        super().__init__(message)
        self.image = image
        self.step = step


@dataclasses.dataclass(frozen=True)
class Network:
    """A VGG module and its parameters, as `weights.load` gives them."""

    model: vgg.VGG
    params: Mapping

    def features(self, image: jax.Array, layers: tuple[str, ...]) -> dict[str, jax.Array]:
        """VGG activations of one RGB image in [0, 1], (h, w, 3), for ``layers``."""
        return self.model.apply({"params": self.params}, image, layers)


def output_shape(shape: Sequence[int], size: int) -> tuple[int, int]:
    """(h, w) of an image of ``shape`` resized so that its longest side is ``size``."""
    h, w = shape[:2]
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize(image: jax.Array, hw: Sequence[int]) -> jax.Array:
    """Antialiased bicubic resize of an image in [0, 1], (h, w[, c]), to ``hw``, clipped to [0, 1]."""
    image = jnp.asarray(image, jnp.float32)
    if tuple(image.shape[:2]) == tuple(hw):
        return image
    out = jax.image.resize(image, (*hw, *image.shape[2:]), "cubic", antialias=True)
    return jnp.clip(out, 0.0, 1.0)


def _resize_field(a: jax.Array, hw: Sequence[int]) -> jax.Array:
    """Bilinear resize of any (h, w, c) array (optimiser moments: not clipped)."""
    return jax.image.resize(a, (*hw, *a.shape[2:]), "linear", antialias=True)


def scale_sizes(config: StylizeConfig) -> tuple[int, ...]:
    """Longest side at each scale of the run, ending with ``config.size``.

    Without ``multiscale`` there is one scale. With it, ``config.scales`` if
    given, else sizes from `MIN_SCALE` growing by sqrt(2) (as crowsonkb's
    style-transfer-pytorch does).
    """
    if not config.multiscale:
        return (config.size,)
    if config.scales:
        return tuple(sorted(set(config.scales) - {config.size})) + (config.size,)
    sizes, s = [], MIN_SCALE
    while s < config.size * 0.95:
        sizes.append(round(s))
        s *= math.sqrt(2)
    return (*sizes, config.size)


def _layer_masks(mask: jax.Array, feats: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """A (h, w) mask resized to each layer's resolution (area average, like the network's pooling)."""
    return {name: jnp.clip(_resize_field(mask[..., None], f.shape[:2])[..., 0], 0.0, 1.0)
            for name, f in feats.items()}


def _strips(model: vgg.VGG, image_shape: Sequence[int]) -> dict | None:
    """How `strips.content_and_style` should run an image, or None to run it whole.

    With ``remat``, in stages cut at `strips.REMAT_SPLITS`, each but the last in
    strips of about `strips.REMAT_PIXELS`; without, only images above
    `strips.MAX_PIXELS` (huge style images) go in strips, all of the network.
    """
    if model.remat:
        return dict(pixels=strips.REMAT_PIXELS, splits=strips.REMAT_SPLITS)
    return dict(pixels=strips.STRIP_PIXELS) if image_shape[0] * image_shape[1] > strips.MAX_PIXELS else None


def content_and_style(model: vgg.VGG, params, image: jax.Array, content_layers: tuple[str, ...],
                      style_layers: tuple[str, ...], kind: str = "gram",
                      masks: Sequence[Mapping[str, jax.Array] | None] = (None,)) -> tuple[dict, tuple[dict, ...]]:
    """All the objective needs of the network: content activations and each region's style statistics.

    The network runs over the whole image, or strip by strip (with ``remat``,
    and for huge images) through `strips.content_and_style`, which gives the
    same values with one strip's activations in memory at a time.

    Args:
      model, params: the network.
      image: RGB in [0, 1], (h, w, 3).
      content_layers, style_layers: layer names (either may be empty).
      kind: the style statistics, "gram" or "mean_cov".
      masks: per style region, None or layer name -> (h_l, w_l) position weights.
    Returns:
      ``(content, style)``: layer name -> activations, and per region, layer
      name -> statistics (`losses.region_statistics`).
    """
    how = _strips(model, image.shape)
    if how is None or not (content_layers or style_layers):
        return strips.at_once(model, params, image, None, content_layers, style_layers, kind, masks)
    return strips.content_and_style(model, params, image, content_layers, style_layers, kind, masks, **how)


@functools.partial(jax.jit, static_argnames=("model", "content_layers", "style_layers", "kind"))
def compute_targets(model: vgg.VGG, params, content: jax.Array, styles: tuple[jax.Array, ...],
                    blend: jax.Array, content_masks: tuple[jax.Array, ...] | None = None,
                    style_masks: tuple[jax.Array, ...] | None = None, *,
                    content_layers: tuple[str, ...], style_layers: tuple[str, ...],
                    kind: str = "gram") -> losses.Targets:
    """Content activations and style targets, the fixed goals of the optimisation.

    Args:
      model, params: the network.
      content: content image, RGB in [0, 1], (h, w, 3), at the output size.
      styles: the style images, RGB in [0, 1], each (h_i, w_i, 3) at its own size.
      blend: (n_styles,) weights summing to 1. Without masks the style
        statistics are blended with them (one target for the whole image);
        with masks they weight each region's loss.
      content_masks, style_masks: optional, one (h, w) mask per style image: the
        region of the output (at the content's size) that takes that style, and
        the region of the style image its statistics come from.
      content_layers, style_layers: layer names.
      kind: the style statistics, "gram" or "mean_cov".
    Returns:
      `losses.Targets`.
    """
    def shapes(image):
        return jax.eval_shape(lambda x: model.apply({"params": params}, x, style_layers), image)

    content_feats = content_and_style(model, params, content, content_layers, ())[0]

    def stats(i):
        mask = None if style_masks is None else _layer_masks(style_masks[i], shapes(styles[i]))
        return content_and_style(model, params, styles[i], (), style_layers, kind, (mask,))[1][0]

    per_style = [stats(i) for i in range(len(styles))]
    if content_masks is None:
        blended = jax.tree.map(lambda *xs: sum(w * x for w, x in zip(blend, xs)), *per_style)
        regions = ({n: losses.style_target(t, kind) for n, t in blended.items()},)
        masks = (None,)
    else:
        regions = tuple({n: losses.style_target(t, kind) for n, t in st.items()} for st in per_style)
        masks = tuple(_layer_masks(m, shapes(content)) for m in content_masks)
    return losses.Targets(content=content_feats, style=regions, masks=masks, kind=kind)


def loss_weights(config: StylizeConfig, targets: losses.Targets, blend: Sequence[float] = (1.0,)) -> losses.Weights:
    """The `losses.Weights` of a run: config weights times each layer's normaliser.

    With masks, region ``i``'s style loss is also multiplied by ``blend[i]``.
    """
    style_w = config.style_layer_weights or (1.0,) * len(config.style_layers)
    content_w = config.content_layer_weights or (1.0,) * len(config.content_layers)
    content_norm = losses.normalizers(targets.content)
    region_w = blend if len(targets.style) > 1 else (1.0,)
    style_layers = []
    for region, rw in zip(targets.style, region_w):
        norm = losses.style_normalizers(region, targets.kind)
        style_layers.append({n: rw * w * norm[n] / sum(style_w) for n, w in zip(config.style_layers, style_w)})
    return losses.Weights(
        content=jnp.float32(config.content_weight),
        style=jnp.float32(config.style_weight),
        tv=jnp.float32(config.tv_weight),
        content_layers={n: w * content_norm[n] / sum(content_w) for n, w in zip(config.content_layers, content_w)},
        style_layers=tuple(style_layers),
    )


def _optimizer(name: str) -> optax.GradientTransformationExtraArgs:
    """The optax transformation; Adam's learning rate lives in its state (a traced array)."""
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=0.0)
    return optax.lbfgs()


def init_state(optimizer: str, image: jax.Array, lr: float):
    """Optimiser state for ``image``; ``lr`` is stored in the state for Adam."""
    state = _optimizer(optimizer).init(image)
    if optimizer == "adam":
        state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    # Distinct buffers for every leaf: the state is donated to `_run_chunk`,
    # and optax may initialise several leaves with one shared array. An explicit
    # dtype drops the weak types of L-BFGS's initial scalars, which the first
    # chunk's outputs no longer have (else the chunk would compile twice).
    return jax.tree.map(lambda x: jnp.array(x, x.dtype), state)


def _layers(targets: losses.Targets) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*targets.content, *(n for region in targets.style for n in region)]))


def _objective(network: Network, targets: losses.Targets, weights: losses.Weights,
               optimizer: str) -> Callable[[jax.Array], jax.Array]:
    """The scalar function of the image that the optimiser minimises."""
    def objective(image):
        loss = sum(_terms(network.model, network.params, image, targets, weights).values())
        if optimizer == "lbfgs":
            outside = image - jnp.clip(image, 0.0, 1.0)
            loss = loss + RANGE_PENALTY * jnp.mean(outside * outside)
        return loss

    return objective


def _chunk(model: vgg.VGG, params, image: jax.Array, state, ema_state, targets: losses.Targets,
           weights: losses.Weights, n: jax.Array, *, optimizer: str, ema_decay: float):
    """Run ``n`` (<= CHUNK, traced) optimisation steps; the pure body of `_run_chunk`.

    Returns:
      ``(image, state, ema_state, losses)``; ``losses`` is (CHUNK,), the
      objective at the start of each step (NaN past ``n``).
    """
    objective = _objective(Network(model, params), targets, weights, optimizer)
    opt = _optimizer(optimizer)
    ema = optax.ema(ema_decay) if ema_decay else None

    def step(i, carry):
        image, state, ema_state, history = carry
        if optimizer == "lbfgs":
            # Reuses the value and gradient the line search already computed.
            value, grad = optax.value_and_grad_from_state(objective)(image, state=state)
            updates, state = opt.update(grad, state, image, value=value, grad=grad, value_fn=objective)
            image = optax.apply_updates(image, updates)
        else:
            value, grad = jax.value_and_grad(objective)(image)
            updates, state = opt.update(grad, state, image)
            image = jnp.clip(optax.apply_updates(image, updates), 0.0, 1.0)  # projection onto [0, 1]
        if ema is not None:
            _, ema_state = ema.update(image, ema_state)
        return image, state, ema_state, history.at[i].set(value)

    history = jnp.full((CHUNK,), jnp.nan, jnp.float32)
    return jax.lax.fori_loop(0, n, step, (image, state, ema_state, history))


_run_chunk = jax.jit(_chunk, static_argnames=("model", "optimizer", "ema_decay"),
                     donate_argnames=("image", "state", "ema_state"))


def averaged(ema_state, ema_decay: float) -> jax.Array:
    """The debiased moving average of the iterates held by an `optax.ema` state."""
    return optax.tree.bias_correction(ema_state.ema, ema_decay, ema_state.count)


def _terms(model: vgg.VGG, params, image: jax.Array, targets: losses.Targets, weights: losses.Weights):
    """The weighted loss terms of ``image`` (`losses.loss_terms`)."""
    style_layers = tuple(dict.fromkeys(n for region in targets.style for n in region))
    stats = content_and_style(model, params, image, tuple(targets.content), style_layers, targets.kind, targets.masks)
    return losses.loss_terms_of_statistics(image, *stats, targets, weights)


_report_terms = jax.jit(_terms, static_argnames=("model",))  # for progress reports


def initial_image(init: str | np.ndarray, content: jax.Array, seed: int) -> jax.Array:
    """The starting image: the content, seeded uniform white noise, or a given image.

    Args:
      init: "content", "noise", or an RGB array in [0, 1] (resized to the content's shape).
      content: the content image at the output size, (h, w, 3).
      seed: seed of the noise.
    """
    if isinstance(init, str) and init == "content":
        return jnp.array(content, jnp.float32)
    if isinstance(init, str) and init == "noise":
        return jax.random.uniform(jax.random.key(seed), content.shape, jnp.float32)
    if isinstance(init, str):
        raise UsageError(f"`init` must be 'content', 'noise' or an image, got {init!r}")
    return jnp.array(resize(jnp.asarray(init), content.shape[:2]))


def check_layers(config: StylizeConfig, model: vgg.VGG) -> None:
    """Refuse layer names the network does not have, before any compute."""
    names = vgg.layer_names(model.blocks)
    unknown = [n for n in (*config.content_layers, *config.style_layers) if n not in names]
    if unknown:
        raise UsageError(f"unknown layer(s) {', '.join(unknown)}; layers are named like relu4_2 "
                         f"(conv{{block}}_{{i}}, relu{{block}}_{{i}}, pool{{block}})")


def check_inputs(config: StylizeConfig, styles: Sequence, masks: Sequence | None, *,
                 shard_image: bool = False) -> None:
    """Refuse style blends and masks that do not fit the style images, before any compute.

    ``shard_image``: the image's rows will be split over a mesh, which ``remat`` does not combine with.
    """
    if shard_image and config.remat:
        raise UsageError("`remat` and a row mesh (--shard-image) both split the image's rows and do not "
                         "combine; use one of them")
    if config.style_blend and len(config.style_blend) != len(styles):
        raise UsageError(f"`style_blend` has {len(config.style_blend)} weights but {len(styles)} "
                         f"style image{'s were' if len(styles) != 1 else ' was'} given")
    if masks is not None:
        if len(masks) != len(styles):
            raise UsageError(f"{len(masks)} mask pairs for {len(styles)} style images; give one "
                             "content mask and one style mask per style image")
        for i, (content_mask, style_mask) in enumerate(masks):
            for what, m in (("content", content_mask), ("style", style_mask)):
                if np.ndim(m) != 2:
                    raise UsageError(f"{what} mask {i + 1} must be a 2-D (h, w) array, got shape {np.shape(m)}")
        coverage = np.sum([resize(m, masks[0][0].shape) for m, _ in masks], axis=0)
        if np.min(coverage) < 1e-3:
            raise UsageError("the content masks leave part of the image without any style; "
                             "make them cover the whole image")


def check_sizes(config: StylizeConfig, model: vgg.VGG, content_shape: Sequence[int],
                style_shapes: Sequence[Sequence[int]]) -> None:
    """Refuse scales at which an image is too small for the deepest layer, before any compute.

    A layer after ``p`` poolings needs at least ``2**p`` pixels on each side of
    its input, or its activations are empty and the loss is NaN. `StylizeConfig`
    checks only the longest side, which is not enough for a wide image, the
    coarse scales of ``multiscale``, or a ``style_scale`` below 1.

    Raises:
      UsageError: naming the image, its size at that scale, the layer and the minimum.
    """
    order = vgg.layer_names(model.blocks)

    def minimum(layers):
        deepest = max(layers, key=order.index)
        return deepest, 2 ** sum(n.startswith("pool") for n in order[:order.index(deepest) + 1])

    layer, need = minimum((*config.content_layers, *config.style_layers))
    for size in scale_sizes(config):
        h, w = output_shape(content_shape, size)
        if min(h, w) < need:
            raise UsageError(f"at size {size} the output is {w}x{h} pixels, too small for layer {layer}, "
                             f"which needs at least {need} pixels on each side; raise `size`"
                             + (" or `scales`" if len(scale_sizes(config)) > 1 else ""))
        if not config.style_layers:
            continue
        style_layer, style_need = minimum(config.style_layers)
        for i, shape in enumerate(style_shapes):
            h, w = output_shape(shape, round(size * config.style_scale))
            if min(h, w) < style_need:
                raise UsageError(f"at size {size} with `style_scale` {config.style_scale}, style image {i + 1} is "
                                 f"{w}x{h} pixels, too small for layer {style_layer}, which needs at least "
                                 f"{style_need} pixels on each side; raise `style_scale` or `size`")


def model_for_config(network: Network, config: StylizeConfig) -> vgg.VGG:
    """The network module with the config's pooling, padding, dtype and remat."""
    return network.model.clone(pooling=config.pooling, avg_pool_scale=config.avg_pool_scale,
                               first_padding=config.padding, remat=config.remat,
                               dtype=jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32)


def _prepare_colors(config: StylizeConfig, content: jax.Array, styles: list[jax.Array]):
    """Content and styles as the optimisation sees them, given ``preserve_colors``."""
    if config.preserve_colors == "luminance":
        y = color.luminance(content)
        return color.gray(y), [color.gray(color.match_luminance(color.luminance(s), y)) for s in styles]
    if config.preserve_colors == "histogram":
        return content, [color.match_color_histogram(s, content) for s in styles]
    return content, styles


def stylize(content: np.ndarray | jax.Array, style: np.ndarray | jax.Array | Sequence, network: Network,
            config: StylizeConfig = StylizeConfig(), *,
            init: str | np.ndarray | None = None,
            masks: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
            callback: Callable[[Progress], None] | None = None,
            report_every: int = CHUNK,
            resume: Checkpoint | None = None,
            mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
    """Paint ``content`` in the style of ``style`` (Gatys et al.).

    Args:
      content: RGB in [0, 1], (h, w, 3), any size; resized to each scale's size.
      style: one style image or a list of them, RGB in [0, 1], (h', w', 3);
        each resized to the scale's size times ``config.style_scale``.
      network: the VGG and its weights (`Network(weights.model_for(meta), params)`).
      config: the settings; see `StylizeConfig`.
      init: overrides ``config.init`` with an image array.
      masks: optional, one ``(content_mask, style_mask)`` pair per style image,
        each (h, w) in [0, 1]: the region of the output that takes that style,
        and the region of the style image it is taken from.
      callback: called with a `Progress` every ``report_every`` steps and at the
        end of each scale.
      report_every: steps between callbacks; steps run on device in chunks of
        at most `CHUNK` that end at these points.
      resume: continue from a `Progress.checkpoint` of an earlier run with the
        same inputs and config.
      mesh: optional one-axis mesh (`sharding.row_mesh()`): split the image's
        rows over its devices, for images too big for one device. The losses
        still see the whole image (XLA exchanges halos and sums the partial
        Gram matrices); the result equals the unsharded one up to float32
        rounding (docs/batch.md).
    Returns:
      The output image, RGB in [0, 1], float32 (h_out, w_out, 3).
    Raises:
      UsageError: a layer name the network lacks, or masks and blend weights
        that do not fit the style images.
      NonFiniteLoss: the loss became NaN or Inf (carries the last finite image).
    """
    start = time.perf_counter()
    network = Network(network.model, jax.device_put(network.params))  # not copied again at every chunk
    styles = [jnp.asarray(s) for s in (style if isinstance(style, (list, tuple)) else [style])]
    model = model_for_config(network, config)
    check_layers(config, model)
    check_inputs(config, styles, masks, shard_image=mesh is not None)
    check_sizes(config, model, content.shape, [s.shape for s in styles])
    blend = np.asarray(config.style_blend or [1.0] * len(styles), np.float32)
    blend = blend / blend.sum()
    init = config.init if init is None else init
    sizes = scale_sizes(config)
    total = config.steps * len(sizes)

    image = state = ema_state = None
    for k, size in enumerate(sizes):
        if resume is not None and k < resume.scale:
            continue
        hw = output_shape(content.shape, size)
        content_k = resize(content, hw)
        content_k, styles_k = _prepare_colors(config, content_k, styles)
        styles_k = [resize(s, output_shape(s.shape, round(size * config.style_scale))) for s in styles_k]
        mask_args = {}
        if masks is not None:
            mask_args = dict(content_masks=tuple(resize(c, hw) for c, _ in masks),
                             style_masks=tuple(resize(m, s.shape[:2]) for (_, m), s in zip(masks, styles_k)))
        targets = compute_targets(model, network.params, content_k, tuple(styles_k), jnp.asarray(blend),
                                  **mask_args, content_layers=tuple(config.content_layers),
                                  style_layers=tuple(config.style_layers), kind=config.style_loss)
        weights = loss_weights(config, targets, blend)

        done = 0
        if resume is not None and k == resume.scale:
            image, state, ema_state, done = (jnp.asarray(resume.image), jax.tree.map(jnp.array, resume.state),
                                             None if resume.ema is None else jax.tree.map(jnp.array, resume.ema),
                                             resume.step)
        elif image is None:
            image = initial_image(init, content_k, config.seed)
            state = init_state(config.optimizer, image, config.lr)
        else:
            # Coarse to fine: upsample the image, and Adam's moments with it (as
            # crowsonkb does); L-BFGS's curvature pairs describe the old
            # resolution's problem, so it starts afresh.
            image = resize(image, hw)
            if config.optimizer == "adam":
                state = jax.tree.map(lambda a: _resize_field(a, hw) if a.ndim == 3 else a, state)
                state = state._replace(inner_state=(state.inner_state[0]._replace(
                    nu=jnp.maximum(state.inner_state[0].nu, 0.0)), *state.inner_state[1:]))
            else:
                state = init_state(config.optimizer, image, config.lr)
        if config.ema_decay and ema_state is None:
            ema_state = jax.tree.map(jnp.array, optax.ema(config.ema_decay).init(image))
        elif config.ema_decay and ema_state.ema.shape != image.shape:
            ema_state = ema_state._replace(ema=_resize_field(ema_state.ema, hw))

        pending = []  # per-step losses since the last report
        while done < config.steps:
            n = min(CHUNK, config.steps - done, report_every - done % report_every)
            last_good = np.asarray(image)
            image, state, ema_state, history = _run_chunk(
                model, network.params, image, state, ema_state, targets, weights, jnp.int32(n),
                optimizer=config.optimizer, ema_decay=config.ema_decay) if mesh is None else _run_chunk_rows(
                model, network.params, image, state, ema_state, targets, weights, jnp.int32(n),
                optimizer=config.optimizer, ema_decay=config.ema_decay, mesh=mesh)
            history = np.asarray(history[:n])
            if not np.all(np.isfinite(history)) or not bool(jnp.all(jnp.isfinite(image))):
                raise NonFiniteLoss(f"the loss became NaN or Inf between steps {done} and {done + n}; "
                                    "lower --lr or the loss weights", last_good, k * config.steps + done)
            done += n
            pending.append(history)
            if callback is not None and (done % report_every == 0 or done == config.steps):
                # Copies: `image`, `state` and `ema_state` are donated to the next chunk.
                current = jnp.array(_output(image, ema_state, config))
                terms = {key: float(v) for key, v in
                         _report_terms(model, network.params, current, targets, weights).items()}
                chunk_losses, pending = np.concatenate(pending), []
                callback(Progress(step=k * config.steps + done, steps=total, loss=float(chunk_losses[-1]),
                                  losses=chunk_losses, terms=terms, image=current,
                                  elapsed=time.perf_counter() - start,
                                  checkpoint=Checkpoint(k, done, *jax.tree.map(jnp.array, (image, state, ema_state)))))
    result = jnp.clip(_output(image, ema_state, config), 0.0, 1.0)
    if config.preserve_colors == "luminance":
        result = color.combine_luminance(result, resize(content, result.shape[:2]))
    return np.asarray(result)


def _output(image: jax.Array, ema_state, config: StylizeConfig) -> jax.Array:
    """The image a run reports: the iterate, or its moving average."""
    return image if not config.ema_decay else averaged(ema_state, config.ema_decay)


def _run_chunk_rows(*args, **kwargs):
    """`sharding.chunk_rows` (imported here, not at the top: it imports this module)."""
    from jaxstyle import sharding

    return sharding.chunk_rows(*args, **kwargs)
