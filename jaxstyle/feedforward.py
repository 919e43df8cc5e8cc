"""Fast style: train a feed-forward network on Gatys et al.'s losses, then paint photos in one pass.

Johnson, Alahi & Fei-Fei (ECCV 2016) and Ulyanov et al. (2016): instead of
optimising the pixels of each picture (`jaxstyle.optimize`), optimise the
weights of an image transformation network (`jaxstyle.transform`) so that, for
any photo :math:`c`, its output :math:`f_\\theta(c)` scores well on the same
objective the pixels would be optimised for:

.. math::  \\min_\\theta \\; \\mathbb{E}_c \\; L(f_\\theta(c);\\, c, s)

where :math:`L` is `step.loss_terms` summed: the content term against the
photo's own VGG activations, the style term against the fixed style image's
statistics, and total variation, each with the weights and layer
normalisation `jaxstyle stylize` uses (so ``style_weight`` means the same).
The expectation is a mean over a batch of photos; the gradient is taken with
respect to :math:`\\theta`, not the pixels. That is the whole difference from
Gatys et al., and in JAX it is which argument `jax.grad` differentiates.

A training step is one pure function of (state, photos), jitted once with its
shardings: the parameters and the optimiser's state replicated on every device,
the batch split along its first axis. The mean over the batch becomes an
all-reduce of the gradients, so data parallelism is a layout, not a rewrite.
With several processes (`jax.distributed`) the mesh holds every process's
devices: each process loads only its rows of the batch (`Trainer.rows`), and
the same all-reduce crosses hosts.

A network of several styles (Dumoulin et al. 2017) is the same loop with one
style goal per style: training item :math:`k` is painted in style
:math:`k \\bmod n` and scored against that style's statistics (`item_styles`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxstyle import losses, plan, step, transform
from jaxstyle.config import TrainConfig
from jaxstyle.errors import UsageError
from jaxstyle.step import Network


@struct.dataclass
class TrainState:
    """Where training stands: the network's parameters, Adam's state, and the steps done."""

    params: Any
    opt_state: Any
    step: jax.Array


@dataclasses.dataclass(frozen=True)
class TrainProgress:
    """What `train` reports every ``report_every`` steps and at the end.

    Attributes:
      step: steps done; steps: steps in the whole run.
      loss: the batch's objective at each step since the last report, (n,) float32.
      terms: the weighted "content", "style" and "tv" terms of the last step's batch (means over its photos).
      elapsed: seconds since `train` started (the first step compiles).
      waited: seconds the training loop has waited for photos so far (the input pipeline's delay).
      state: the state to continue from (`train`'s ``state``).
    """

    step: int
    steps: int
    loss: np.ndarray
    terms: dict[str, float]
    elapsed: float
    waited: float
    state: TrainState


def optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam on the network's weights (Johnson et al. train with Adam at 1e-3)."""
    return optax.adam(config.lr)


def style_goal(network: Network, styles: Sequence[np.ndarray], config: TrainConfig) -> dict:
    """Each style image's statistics at the crops' size times ``style_scale``, as `stylize` computes them.

    Args:
      network: the VGG and its weights.
      styles: the style images, RGB in [0, 1], each (h, w, 3).
      config: the training settings.
    Returns:
      One style region of `losses.Targets` whose arrays have a leading axis of one entry per style.
    """
    loss = config.loss_config()
    model = step.configured(network.model, loss)
    resized = tuple(step.resize(s, plan.output_shape(s.shape, plan.style_size(loss, config.size))) for s in styles)
    regions = step.style_targets(model, network.params, resized, jnp.ones(len(styles)) / len(styles),
                                 layers=tuple(loss.style_layers), kind=loss.style_loss, regions=True)
    return jax.tree.map(lambda *per_style: jnp.stack(per_style), *regions)


def item_styles(step_index: jax.Array, batch_size: int, styles: int) -> jax.Array:
    """Which style each photo of a batch is painted in: training item ``k`` takes style ``k mod styles``.

    Every batch of a network of several styles mixes them (Dumoulin et al. 2017 give each batch one), and
    the choice is a function of the step, so a resumed run continues the same sequence.
    """
    return (step_index * batch_size + jnp.arange(batch_size)) % styles


def photo_terms(network: Network, config: TrainConfig, style: dict, output: jax.Array,
                photo: jax.Array) -> dict[str, jax.Array]:
    """The weighted terms of one output against its photo and a style: `stylize`'s objective.

    Args:
      network: the VGG (configured) and its weights.
      config: the training settings (loss weights and layers).
      style: one style's region of `style_goal` (no leading axis).
      output, photo: RGB in [0, 1], (h, w, 3): the network's picture and the photo it painted.
    Returns:
      ``{"content", "style", "tv"}`` float32 scalars (`step.loss_terms`).
    """
    loss = config.loss_config()
    content = step.content_targets(network.model, network.params, photo, layers=tuple(loss.content_layers))
    targets = losses.Targets(content=content, style=(style,), masks=(None,), kind=loss.style_loss)
    return step.loss_terms(network.model, network.params, output, targets, step.loss_weights(loss, targets))


def batch_loss(params, photos: jax.Array, which: jax.Array, *, model: transform.TransformNet, network: Network,
               config: TrainConfig, goal: dict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The objective of a batch: the mean over its photos of the sum of `photo_terms`, and the mean terms.

    Args:
      params: the transformation network's parameters (what is differentiated).
      photos: (n, h, w, 3) RGB in [0, 1].
      which: (n,) the style of each photo (`item_styles`).
      model: the transformation network; network: the VGG; config: as in `photo_terms`; goal: `style_goal`.
    """
    outputs = transform.apply(model, params, photos, jax.nn.one_hot(which, model.styles))
    styles = jax.tree.map(lambda t: t[which], goal)
    terms = jax.vmap(functools.partial(photo_terms, network, config))(styles, outputs, photos)
    terms = {name: jnp.mean(value) for name, value in terms.items()}
    return sum(terms.values()), terms


def train_step(state: TrainState, photos: jax.Array, *, model: transform.TransformNet, network: Network,
               config: TrainConfig, goal: dict) -> tuple[TrainState, jax.Array, dict[str, jax.Array]]:
    """One step of Adam on the network's weights: the new state, the batch's loss and its terms."""
    which = item_styles(state.step, photos.shape[0], model.styles)
    (value, terms), grads = jax.value_and_grad(batch_loss, has_aux=True)(
        state.params, photos, which, model=model, network=network, config=config, goal=goal)
    updates, opt_state = optimizer(config).update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), value, terms


class Trainer:
    """`train_step` compiled for a layout: parameters replicated on ``devices``, each batch split over them.

    Args:
      network: the VGG and its weights.
      styles: the style images, RGB in [0, 1], each (h, w, 3): one network learns them all (conditional
        instance normalisation), photo ``k`` of the training taking style ``k mod len(styles)``.
      config: the training settings; ``batch_size`` must be a multiple of the device count.
      devices: the devices to train on (default: all, those of every process under `jax.distributed`).
    Raises:
      UsageError: ``batch_size`` does not split evenly over the devices.
    """

    def __init__(self, network: Network, styles: Sequence[np.ndarray], config: TrainConfig,
                 devices: Sequence[jax.Device] | None = None):
        devices = list(jax.devices() if devices is None else devices)
        if config.batch_size % len(devices):
            raise UsageError(f"`batch_size` {config.batch_size} does not split over {len(devices)} devices; "
                             f"use a multiple of {len(devices)}")
        self.config = config
        self.model = transform.model_for(config.architecture, len(styles))
        network = Network(step.configured(network.model, config.loss_config()), network.params)
        self.mesh = Mesh(np.array(devices), ("batch",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.split = NamedSharding(self.mesh, PartitionSpec("batch"))
        self.network, self.goal = network, jax.device_put(host(style_goal(network, styles, config)), self.replicated)
        self.step = jax.jit(functools.partial(train_step, model=self.model, network=network, config=config,
                                              goal=self.goal),
                            in_shardings=(self.replicated, self.split), out_shardings=self.replicated)

    def init(self) -> TrainState:
        """Fresh weights (from ``config.seed``) and Adam's state, replicated."""
        params = transform.init_params(self.config.architecture, jax.random.key(self.config.seed), self.model.styles)
        return self.place(host(TrainState(params, optimizer(self.config).init(params), jnp.int32(0))))

    def place(self, state: TrainState) -> TrainState:
        """A state on the host (the same in every process) replicated on the devices."""
        return jax.device_put(state, self.replicated)

    @property
    def rows(self) -> slice:
        """The rows of each batch that this process's devices hold: all of them with one process."""
        shape = (self.config.batch_size, self.config.size, self.config.size, 3)
        starts = [index[0].indices(shape[0])[:2] for index in self.split.addressable_devices_indices_map(shape).values()]
        return slice(min(a for a, _ in starts), max(b for _, b in starts))

    def photos(self, rows: np.ndarray) -> jax.Array:
        """A batch of photos split over the devices, from this process's `rows` of it, (rows, h, w, 3)."""
        shape = (self.config.batch_size, *np.shape(rows)[1:])
        return jax.make_array_from_process_local_data(self.split, np.asarray(rows, np.float32), shape)


def host(tree: Any) -> Any:
    """A pytree of replicated arrays as NumPy arrays: each from this process's first copy (under
    `jax.distributed` the other processes' copies are not this one's to read)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x), tree)


def train(batches: Iterable[np.ndarray], trainer: Trainer, *, state: TrainState | None = None,
          callback: Callable[[TrainProgress], None] | None = None, report_every: int = 10) -> TrainState:
    """Train until ``trainer.config.steps``: one batch from ``batches`` per step.

    Args:
      batches: this process's `Trainer.rows` of each batch, (rows, size, size, 3) RGB in [0, 1], from the
        step the state is at (`jaxstyle.train_data.Prefetcher`); an object with a ``waited`` attribute
        reports the delay.
      trainer: the compiled step and its layout.
      state: where to continue from (default: `Trainer.init`).
      callback: called with a `TrainProgress` every ``report_every`` steps and at the end.
    Returns:
      The final `TrainState`.
    """
    config = trainer.config
    state = trainer.init() if state is None else trainer.place(state)
    done, start, pending = int(state.step), time.perf_counter(), []
    feed = iter(batches)
    while done < config.steps:
        state, value, terms = trainer.step(state, trainer.photos(next(feed)))
        pending.append(value)
        done += 1
        if callback is not None and (done % report_every == 0 or done == config.steps):
            callback(TrainProgress(step=done, steps=config.steps, loss=host(jnp.stack(pending)),
                                   terms={k: float(v) for k, v in host(terms).items()},
                                   elapsed=time.perf_counter() - start, waited=float(getattr(batches, "waited", 0.0)),
                                   state=state))
            pending = []
    return state


def stylize_images(model: transform.TransformNet, params: Mapping, pictures: Sequence[np.ndarray], *,
                   style: Sequence[float] | None = None, batch_size: int = 8,
                   devices: Sequence[jax.Device] | None = None) -> list[np.ndarray]:
    """Paint pictures with a trained network: same-shape pictures go through in batches split over the devices.

    Args:
      model, params: the trained network (`model_for` of its file).
      pictures: RGB in [0, 1], each (h, w, 3), any sizes.
      style: the styles' mixing weights, for a network of several styles (default: its first).
      batch_size: pictures per forward pass (rounded up to a multiple of the device count).
      devices: default all.
    Returns:
      The painted pictures, RGB in [0, 1] float32, each the shape of its input.
    """
    devices = list(jax.devices() if devices is None else devices)
    size = plan.program_size(batch_size, batch_size, len(devices))
    split = NamedSharding(Mesh(np.array(devices), ("batch",)), PartitionSpec("batch"))
    weights = None if style is None else jnp.asarray(style, jnp.float32)
    outputs: list[np.ndarray | None] = [None] * len(pictures)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, picture in enumerate(pictures):
        by_shape.setdefault(tuple(picture.shape), []).append(i)
    for members in by_shape.values():
        for at in range(0, len(members), size):
            chunk = members[at:at + size]
            batch = np.stack([pictures[i] for i in chunk] + [pictures[chunk[0]]] * (size - len(chunk)))
            painted = np.asarray(_painted(model, params, jax.device_put(batch.astype(np.float32), split), weights))
            for j, i in enumerate(chunk):
                outputs[i] = painted[j]
    return outputs


@functools.partial(jax.jit, static_argnames=("model",))
def _painted(model: transform.TransformNet, params, batch: jax.Array, style: jax.Array | None) -> jax.Array:
    return transform.apply(model, params, batch, style)
