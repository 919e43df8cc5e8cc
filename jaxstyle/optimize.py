"""Style transfer as optimisation: optax updates the pixels of the output image.

The work is split so that each piece is a pure function of arrays:

- `compute_targets`: content activations and style Gram matrices, once.
- `_run_chunk`: up to `CHUNK` optimisation steps on device (`lax.fori_loop`),
  jit-compiled once per image shape, optimiser and layer choice. Loss weights
  and the learning rate are traced arguments, so changing them never
  recompiles.
- `stylize`: the driver. It calls `_run_chunk` until done and reports progress
  to an optional callback between chunks; it never prints.

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
import time
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxstyle import losses, vgg
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import JaxstyleError, UsageError

CHUNK = 10  # steps run on device between progress callbacks
RANGE_PENALTY = 1e3  # L-BFGS: weight of mean((x - clip(x, 0, 1))^2)


@dataclasses.dataclass(frozen=True)
class Progress:
    """What `stylize` reports after each chunk of steps.

    Attributes:
      step: steps done so far.
      steps: steps in the run.
      loss: objective at the start of the last step.
      losses: objective at the start of each step since the last report, (n,) float32.
      terms: the weighted content, style and total-variation terms after the last step.
      image: the current output, RGB in [0, 1], (h, w, 3), a device array.
      elapsed: seconds since the run started (compilation included).
    """

    step: int
    steps: int
    loss: float
    losses: np.ndarray
    terms: dict[str, float]
    image: jax.Array
    elapsed: float


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


def output_shape(shape: tuple[int, ...], size: int) -> tuple[int, int]:
    """(h, w) of an image of ``shape`` resized so that its longest side is ``size``."""
    h, w = shape[:2]
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize(image: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """Antialiased bicubic resize of an RGB image in [0, 1] to ``hw``, clipped to [0, 1]."""
    if tuple(image.shape[:2]) == tuple(hw):
        return jnp.asarray(image, jnp.float32)
    out = jax.image.resize(jnp.asarray(image, jnp.float32), (*hw, image.shape[2]), "cubic", antialias=True)
    return jnp.clip(out, 0.0, 1.0)


@functools.partial(jax.jit, static_argnames=("model", "content_layers", "style_layers"))
def compute_targets(model: vgg.VGG, params, content: jax.Array, style: jax.Array, *,
                    content_layers: tuple[str, ...], style_layers: tuple[str, ...]) -> losses.Targets:
    """Content activations and style Gram matrices, the fixed targets of the optimisation.

    Args:
      model, params: the network.
      content: content image, RGB in [0, 1], (h, w, 3), at the output size.
      style: style image, RGB in [0, 1], (h', w', 3), at its own size.
      content_layers, style_layers: layer names.
    Returns:
      `losses.Targets`.
    """
    content_feats = model.apply({"params": params}, content, content_layers) if content_layers else {}
    style_feats = model.apply({"params": params}, style, style_layers) if style_layers else {}
    return losses.Targets(
        content={name: content_feats[name] for name in content_layers},
        style={name: losses.gram_matrix(style_feats[name]) for name in style_layers},
    )


def loss_weights(config: StylizeConfig, targets: losses.Targets) -> losses.Weights:
    """The `losses.Weights` of a run: config weights times each layer's normaliser."""
    style_w = config.style_layer_weights or (1.0,) * len(config.style_layers)
    content_norm = losses.normalizers(targets.content)
    style_norm = losses.normalizers(targets.style)
    return losses.Weights(
        content=jnp.float32(config.content_weight),
        style=jnp.float32(config.style_weight),
        tv=jnp.float32(config.tv_weight),
        content_layers={n: content_norm[n] / len(config.content_layers) for n in config.content_layers},
        style_layers={n: w * style_norm[n] / sum(style_w) for n, w in zip(config.style_layers, style_w)},
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
    # and optax may initialise several leaves with one shared array.
    return jax.tree.map(jnp.array, state)


def _objective(network: Network, targets: losses.Targets, weights: losses.Weights,
               optimizer: str) -> Callable[[jax.Array], jax.Array]:
    """The scalar function of the image that the optimiser minimises."""
    layers = tuple(dict.fromkeys([*targets.content, *targets.style]))

    def objective(image):
        loss = losses.total_loss(image, network.features(image, layers), targets, weights)
        if optimizer == "lbfgs":
            outside = image - jnp.clip(image, 0.0, 1.0)
            loss = loss + RANGE_PENALTY * jnp.mean(outside * outside)
        return loss

    return objective


@functools.partial(jax.jit, static_argnames=("model", "optimizer"), donate_argnames=("image", "state"))
def _run_chunk(model: vgg.VGG, params, image: jax.Array, state, targets: losses.Targets,
               weights: losses.Weights, n: jax.Array, *, optimizer: str):
    """Run ``n`` (<= CHUNK, traced) optimisation steps on device.

    Returns:
      ``(image, state, losses)``; ``losses`` is (CHUNK,), the objective before
      each step (NaN past ``n``).
    """
    objective = _objective(Network(model, params), targets, weights, optimizer)
    opt = _optimizer(optimizer)

    def step(i, carry):
        image, state, history = carry
        if optimizer == "lbfgs":
            # Reuses the value and gradient the line search already computed.
            value, grad = optax.value_and_grad_from_state(objective)(image, state=state)
            updates, state = opt.update(grad, state, image, value=value, grad=grad, value_fn=objective)
            image = optax.apply_updates(image, updates)
        else:
            value, grad = jax.value_and_grad(objective)(image)
            updates, state = opt.update(grad, state, image)
            image = jnp.clip(optax.apply_updates(image, updates), 0.0, 1.0)  # projection onto [0, 1]
        return image, state, history.at[i].set(value)

    history = jnp.full((CHUNK,), jnp.nan, jnp.float32)
    return jax.lax.fori_loop(0, n, step, (image, state, history))


@functools.partial(jax.jit, static_argnames=("model",))
def _terms(model: vgg.VGG, params, image: jax.Array, targets: losses.Targets, weights: losses.Weights):
    """The weighted loss terms of ``image``, for progress reports."""
    layers = tuple(dict.fromkeys([*targets.content, *targets.style]))
    return losses.loss_terms(image, Network(model, params).features(image, layers), targets, weights)


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
    return resize(jnp.asarray(init), content.shape[:2])


def check_layers(config: StylizeConfig, model: vgg.VGG) -> None:
    """Refuse layer names the network does not have, before any compute."""
    names = vgg.layer_names(model.blocks)
    unknown = [n for n in (*config.content_layers, *config.style_layers) if n not in names]
    if unknown:
        raise UsageError(f"unknown layer(s) {', '.join(unknown)}; layers are named like relu4_2 "
                         f"(conv{{block}}_{{i}}, relu{{block}}_{{i}}, pool{{block}})")


def stylize(content: np.ndarray | jax.Array, style: np.ndarray | jax.Array, network: Network,
            config: StylizeConfig = StylizeConfig(), *,
            init: str | np.ndarray | None = None,
            callback: Callable[[Progress], None] | None = None,
            report_every: int = CHUNK) -> np.ndarray:
    """Paint ``content`` in the style of ``style`` (Gatys et al.).

    Args:
      content: RGB in [0, 1], (h, w, 3), any size; resized to ``config.size``.
      style: RGB in [0, 1], (h', w', 3); resized to ``config.size * config.style_scale``.
      network: the VGG and its weights (`Network(weights.model_for(meta, pooling=...), params)`).
      config: the settings; see `StylizeConfig`. ``config.pooling`` is applied to the model.
      init: overrides ``config.init`` with an image array.
      callback: called with a `Progress` every ``report_every`` steps and at the end.
      report_every: steps between callbacks; steps run on device in chunks of
        at most `CHUNK` that end at these points.
    Returns:
      The output image, RGB in [0, 1], float32 (h_out, w_out, 3).
    Raises:
      UsageError: a layer name the network lacks.
      NonFiniteLoss: the loss became NaN or Inf (carries the last finite image).
    """
    start = time.perf_counter()
    model = network.model.clone(pooling=config.pooling)
    check_layers(config, model)
    hw = output_shape(content.shape, config.size)
    content = resize(jnp.asarray(content), hw)
    style = resize(jnp.asarray(style), output_shape(style.shape, round(config.size * config.style_scale)))
    targets = compute_targets(model, network.params, content, style,
                              content_layers=tuple(config.content_layers), style_layers=tuple(config.style_layers))
    weights = loss_weights(config, targets)

    image = initial_image(config.init if init is None else init, content, config.seed)
    state = init_state(config.optimizer, image, config.lr)
    done, pending = 0, []  # `pending`: per-step losses since the last report
    while done < config.steps:
        n = min(CHUNK, config.steps - done, report_every - done % report_every)
        last_good = np.asarray(image)
        image, state, history = _run_chunk(model, network.params, image, state, targets, weights,
                                           jnp.int32(n), optimizer=config.optimizer)
        history = np.asarray(history[:n])
        if not np.all(np.isfinite(history)) or not bool(jnp.all(jnp.isfinite(image))):
            raise NonFiniteLoss(f"the loss became NaN or Inf between steps {done} and {done + n}; "
                                "lower --lr or the loss weights", last_good, done)
        done += n
        pending.append(history)
        if callback is not None and (done % report_every == 0 or done == config.steps):
            terms = {k: float(v) for k, v in _terms(model, network.params, image, targets, weights).items()}
            chunk_losses, pending = np.concatenate(pending), []
            callback(Progress(step=done, steps=config.steps, loss=float(chunk_losses[-1]), losses=chunk_losses,
                              terms=terms, image=image, elapsed=time.perf_counter() - start))
    return np.asarray(jnp.clip(image, 0.0, 1.0))
