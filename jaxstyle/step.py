"""One step of style transfer, as pure functions of arrays: the objective, a chunk of steps, the optimiser's state.

This is the whole algorithm of Gatys et al. for one image; the driver
(`jaxstyle.optimize`) only loops over scales and chunks, and the layouts
(`jaxstyle.sharding`) decide how a chunk is compiled for a batch of images.

- `content_and_style`: all the objective needs of the network, the content
  activations and the style statistics of an image; with ``remat``, computed
  strip by strip, so that a step's backward pass holds one strip at a time.
- `compute_targets` (`content_targets`, `style_targets`, `region_masks`): the
  content image's and style images' activations and statistics, the fixed
  goals of the optimisation, once per scale.
- `loss_weights`, `loss_terms`, `objective`: the weighted loss, a scalar
  function of the image.
- `chunk`: up to `CHUNK` optimisation steps of one image in a `lax.fori_loop`.
  Loss weights and the learning rate are arguments (traced arrays), so
  changing them never recompiles.
- `init_state`, `resize_state`, `init_average`, `resize_average`: the
  optimiser's state, created and carried from one scale to the next.

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
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxstyle import losses, plan, strips, vgg
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import UsageError

CHUNK = 10  # steps run on device between progress reports
RANGE_PENALTY = 1e3  # L-BFGS: weight of mean((x - clip(x, 0, 1))^2)


@dataclasses.dataclass(frozen=True)
class Network:
    """A VGG module and its parameters, as `weights.load` gives them."""

    model: vgg.VGG
    params: Mapping

    def features(self, image: jax.Array, layers: tuple[str, ...]) -> dict[str, jax.Array]:
        """VGG activations of one RGB image in [0, 1], (h, w, 3), for ``layers``."""
        return self.model.apply({"params": self.params}, image, layers)


def configured(model: vgg.VGG, config: StylizeConfig, size: int | None = None) -> vgg.VGG:
    """The network module with the config's pooling, padding, dtype, remat and strip size (at the
    scale of longest side ``size``: strip by strip only above ``config.remat_above``)."""
    remat = config.remat and (size is None or size > config.remat_above)
    return model.clone(pooling=config.pooling, avg_pool_scale=config.avg_pool_scale,
                       first_padding=config.padding, remat=remat, strip_pixels=config.strip_pixels,
                       dtype=jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32)


def resize(image: jax.Array, hw: Sequence[int]) -> jax.Array:
    """Antialiased bicubic resize of an image in [0, 1], (h, w[, c]), to ``hw``, clipped to [0, 1]."""
    image = jnp.asarray(image, jnp.float32)
    if tuple(image.shape[:2]) == tuple(hw):
        return image
    out = jax.image.resize(image, (*hw, *image.shape[2:]), "cubic", antialias=True)
    return jnp.clip(out, 0.0, 1.0)


def resize_field(a: jax.Array, hw: Sequence[int]) -> jax.Array:
    """Bilinear resize of any (h, w, ...) array, such as a mask or an optimiser moment (not clipped).

    The linear kernel's weights are non-negative, so a non-negative field
    (Adam's second moment) stays non-negative.
    """
    return jax.image.resize(a, (*hw, *a.shape[2:]), "linear", antialias=True)


# ----------------------------------------------------------------------------
# What the objective needs of the network


def content_and_style(model: vgg.VGG, params, image: jax.Array, content_layers: tuple[str, ...],
                      style_layers: tuple[str, ...], kind: str = "gram",
                      masks: Sequence[Mapping[str, jax.Array] | None] = (None,)) -> tuple[dict, tuple[dict, ...]]:
    """All the objective needs of the network: content activations and each region's style statistics.

    The network runs over the whole image, or strip by strip (with ``remat``,
    and for huge images; `plan.strips_for`) through `strips.content_and_style`,
    which gives the same values with one strip's activations in memory at a time.

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
    how = plan.strips_for(model.remat, image.shape, model.strip_pixels)
    if how is None or not (content_layers or style_layers):
        return strips.at_once(model, params, image, None, content_layers, style_layers, kind, masks)
    return strips.content_and_style(model, params, image, content_layers, style_layers, kind, masks, **how)


def layer_masks(model: vgg.VGG, params, mask: jax.Array, image_shape: Sequence[int],
                layers: tuple[str, ...]) -> dict[str, jax.Array]:
    """A (h, w) mask of an image of ``image_shape`` at each layer's resolution (area average, like pooling)."""
    feats = jax.eval_shape(lambda x: model.apply({"params": params}, x, layers),
                           jax.ShapeDtypeStruct(tuple(image_shape), jnp.float32))
    return {name: jnp.clip(resize_field(mask[..., None], f.shape[:2])[..., 0], 0.0, 1.0)
            for name, f in feats.items()}


@functools.partial(jax.jit, static_argnames=("model", "layers"))
def content_targets(model: vgg.VGG, params, content: jax.Array, *, layers: tuple[str, ...]) -> dict:
    """The content image's activations at ``layers``: layer name -> (h_l, w_l, c)."""
    return content_and_style(model, params, content, layers, ())[0]


@functools.partial(jax.jit, static_argnames=("model", "layers", "kind", "regions"))
def style_targets(model: vgg.VGG, params, styles: tuple[jax.Array, ...], blend: jax.Array,
                  style_masks: tuple[jax.Array, ...] | None = None, *, layers: tuple[str, ...], kind: str,
                  regions: bool = False) -> tuple[dict, ...]:
    """The style targets: one region with the styles' statistics blended, or one region per style.

    Args:
      model, params: the network.
      styles: the style images, RGB in [0, 1], each (h_i, w_i, 3) at its own size.
      blend: (n_styles,) weights summing to 1 (used without ``regions``).
      style_masks: optional, one (h_i, w_i) mask per style image: the region
        of that image its statistics come from.
      layers: the style layers.
      kind: "gram" or "mean_cov".
      regions: one target per style image (with content masks), else one blended target.
    Returns:
      A tuple of regions, each layer name -> `losses.style_target`.
    """
    def stats(i):
        mask = None if style_masks is None else layer_masks(model, params, style_masks[i], styles[i].shape, layers)
        return content_and_style(model, params, styles[i], (), layers, kind, (mask,))[1][0]

    per_style = [stats(i) for i in range(len(styles))]
    if not regions:
        per_style = [jax.tree.map(lambda *xs: sum(w * x for w, x in zip(blend, xs)), *per_style)]
    return tuple({n: losses.style_target(t, kind) for n, t in st.items()} for st in per_style)


@functools.partial(jax.jit, static_argnames=("model", "layers"))
def region_masks(model: vgg.VGG, params, content_masks: tuple[jax.Array, ...], *,
                 layers: tuple[str, ...]) -> tuple[dict, ...]:
    """Each content mask (h, w) at every style layer's resolution: where the output takes each style."""
    return tuple(layer_masks(model, params, m, (*m.shape, 3), layers) for m in content_masks)


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
        with masks they weight each region's loss (`loss_weights`).
      content_masks, style_masks: optional, one (h, w) mask per style image: the
        region of the output (at the content's size) that takes that style, and
        the region of the style image its statistics come from.
      content_layers, style_layers: layer names.
      kind: the style statistics, "gram" or "mean_cov".
    Returns:
      `losses.Targets`.
    """
    style = style_targets(model, params, tuple(styles), blend, style_masks, layers=tuple(style_layers),
                          kind=kind, regions=content_masks is not None)
    masks = (None,) if content_masks is None else region_masks(model, params, tuple(content_masks),
                                                               layers=tuple(style_layers))
    return losses.Targets(content=content_targets(model, params, content, layers=tuple(content_layers)),
                          style=style, masks=masks, kind=kind)


# ----------------------------------------------------------------------------
# The objective


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


def loss_terms(model: vgg.VGG, params, image: jax.Array, targets: losses.Targets,
               weights: losses.Weights) -> dict[str, jax.Array]:
    """The weighted content, style and total-variation terms of one image (`losses.loss_terms`)."""
    return losses.loss_terms_of_statistics(image, *_statistics(model, params, image, targets), targets, weights)


def report_terms(model: vgg.VGG, params, image: jax.Array, targets: losses.Targets,
                 weights: losses.Weights) -> dict[str, jax.Array]:
    """`loss_terms`, and each style layer's weighted share of "style" under ``"style:<layer>"`` (for reports)."""
    stats = _statistics(model, params, image, targets)
    shares = losses.style_layer_distances(stats[1], targets, weights)
    return (losses.loss_terms_of_statistics(image, *stats, targets, weights)
            | {f"style:{name}": weights.style * share for name, share in shares.items()})


def _statistics(model: vgg.VGG, params, image: jax.Array, targets: losses.Targets):
    """`content_and_style` of ``image`` for the layers of ``targets``."""
    style_layers = tuple(dict.fromkeys(n for region in targets.style for n in region))
    return content_and_style(model, params, image, tuple(targets.content), style_layers, targets.kind, targets.masks)


def objective(model: vgg.VGG, params, targets: losses.Targets, weights: losses.Weights,
              optimizer: str) -> Callable[[jax.Array], jax.Array]:
    """The scalar function of the image that the optimiser minimises (with L-BFGS's range penalty)."""
    def loss(image):
        value = sum(loss_terms(model, params, image, targets, weights).values())
        if optimizer == "lbfgs":
            outside = image - jnp.clip(image, 0.0, 1.0)
            value = value + RANGE_PENALTY * jnp.mean(outside * outside)
        return value

    return loss


# ----------------------------------------------------------------------------
# The optimiser and its state


def transformation(name: str) -> optax.GradientTransformationExtraArgs:
    """The optax transformation; Adam's learning rate lives in its state (a traced array)."""
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=0.0)
    return optax.lbfgs()


def init_state(name: str, image: jax.Array, lr: float):
    """Optimiser state for ``image``; ``lr`` is stored in the state for Adam."""
    state = transformation(name).init(image)
    if name == "adam":
        state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    # Distinct buffers for every leaf: the state is donated to the chunk, and
    # optax may initialise several leaves with one shared array. An explicit
    # dtype drops the weak types of L-BFGS's initial scalars, which the first
    # chunk's outputs no longer have (else the chunk would compile twice).
    return jax.tree.map(lambda x: jnp.array(x, x.dtype), state)


def resize_state(name: str, state, image: jax.Array, lr: float):
    """Carry an optimiser state to the next (larger) scale, whose image is ``image``.

    Adam's moments are per-pixel statistics of the gradient, which upsample
    like the image (as crowsonkb's style-transfer-pytorch does): the leaves
    that have the image's structure are found through optax's own state
    structure (`optax.tree.map_params`) and resized. L-BFGS's curvature pairs
    describe the previous resolution's problem, so it starts afresh.
    """
    if name == "lbfgs":
        return init_state(name, image, lr)
    return optax.tree.map_params(transformation(name), lambda a: resize_field(a, image.shape[:2]), state)


def init_average(decay: float, image: jax.Array):
    """The state of the iterates' moving average (`optax.ema`), or None without averaging."""
    return jax.tree.map(jnp.array, optax.ema(decay).init(image)) if decay else None


def resize_average(decay: float, ema_state, hw: Sequence[int]):
    """Carry the moving average to the next scale (its image-shaped leaves resized)."""
    if not decay:
        return None
    return optax.tree.map_params(optax.ema(decay), lambda a: resize_field(a, hw), ema_state)


def averaged(ema_state, ema_decay: float) -> jax.Array:
    """The debiased moving average of the iterates held by an `optax.ema` state."""
    return optax.tree.bias_correction(ema_state.ema, ema_decay, ema_state.count)


def current(image: jax.Array, ema_state, ema_decay: float) -> jax.Array:
    """The picture a run shows: the iterate, or the moving average of the iterates."""
    return image if not ema_decay else averaged(ema_state, ema_decay)


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


# ----------------------------------------------------------------------------
# A chunk of steps


def chunk(model: vgg.VGG, params, image: jax.Array, state, ema_state, targets: losses.Targets,
          weights: losses.Weights, n: jax.Array, *, optimizer: str, ema_decay: float):
    """Run ``n`` (<= CHUNK, traced) optimisation steps of one image.

    Args:
      model, params: the network.
      image: the iterate, (h, w, 3) float32.
      state, ema_state: the optimiser's state and the average's (None without averaging).
      targets, weights: what the image should match, and how much each term counts.
      n: steps to run, an int32 scalar.
      optimizer: "adam" or "lbfgs"; ema_decay: 0 for no averaging.
    Returns:
      ``(image, state, ema_state, losses)``; ``losses`` is (CHUNK,), the
      objective at the start of each step (NaN past ``n``).
    """
    value_fn = objective(model, params, targets, weights, optimizer)
    opt = transformation(optimizer)
    ema = optax.ema(ema_decay) if ema_decay else None

    def step(i, carry):
        image, state, ema_state, history = carry
        if optimizer == "lbfgs":
            # Reuses the value and gradient the line search already computed.
            value, grad = optax.value_and_grad_from_state(value_fn)(image, state=state)
            updates, state = opt.update(grad, state, image, value=value, grad=grad, value_fn=value_fn)
            image = optax.apply_updates(image, updates)
        else:
            value, grad = jax.value_and_grad(value_fn)(image)
            updates, state = opt.update(grad, state, image)
            image = jnp.clip(optax.apply_updates(image, updates), 0.0, 1.0)  # projection onto [0, 1]
        if ema is not None:
            _, ema_state = ema.update(image, ema_state)
        return image, state, ema_state, history.at[i].set(value)

    history = jnp.full((CHUNK,), jnp.nan, jnp.float32)
    return jax.lax.fori_loop(0, n, step, (image, state, ema_state, history))
