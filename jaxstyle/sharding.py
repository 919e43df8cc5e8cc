"""Layouts: three ways of compiling the same chunk of steps for a batch of images.

`step.chunk` optimises one image. Every run has a leading *item* axis (a
single image is a batch of one), and `chunks` runs `step.chunk` for every
item. A `Layout` says how that program is compiled and where its arrays live:

- `single()`: on one device, as it is.
- `batch(devices)`: the item axis is split over the devices of a one-axis
  mesh, each device running `chunks` on its own block of items
  (`jax.shard_map`: data parallelism). Items are independent, so nothing
  crosses devices but the (replicated) network weights and shared targets.
- `rows(devices)`: every image is split by rows over the devices (spatial
  parallelism), for images whose activations do not fit on one device. XLA's
  SPMD partitioner exchanges the halo rows each 3x3 convolution and 2x2
  pooling needs, and turns every sum over positions (the Gram matrix
  :math:`F^\\top F / M`, the content and total-variation means) into
  per-device partial sums plus an all-reduce. So the losses are those of the
  whole image, exactly, and there are no tiling seams.

The same code runs on one CPU (a mesh of one device), 8 GPUs or a TPU slice.
Meshes cover this process's devices only (`jax.local_devices`): with several
processes (`jax.distributed`), each process runs its own share of the images
and no array spans hosts. This module imports the step, never the driver.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxstyle import losses, plan, step, vgg

BATCH = "batch"
ROWS = "rows"


@dataclasses.dataclass(frozen=True)
class ItemAxes:
    """Which targets each item has its own of and which all items share.

    A video frame's temporal references (`losses.Targets.temporal`), when
    there are any, are always the item's own.

    Attributes:
      content: 0 if each item has its own content activations (a batch of
        photos), None if all share them (a sweep's one content image).
      style: 0 if each item has its own style targets (colour preservation
        makes them depend on the content), None if all share them.
    """

    content: int | None
    style: int | None

    def split(self, targets: losses.Targets) -> tuple[tuple, Callable[..., losses.Targets]]:
        """``(own, rebuild)``: the per-item parts of ``targets`` (None where shared), and
        ``rebuild(content, style, temporal)``, one item's `losses.Targets` from its parts."""
        own = (targets.content if self.content == 0 else None, targets.style if self.style == 0 else None,
               targets.temporal)

        def rebuild(content, style, temporal) -> losses.Targets:
            return targets.replace(content=targets.content if content is None else content,
                                   style=targets.style if style is None else style, temporal=temporal)

        return own, rebuild


def for_each_item(fn: Callable, items: tuple, *, sequential: bool = False) -> Any:
    """``fn(*item)`` for every item of the pytrees ``items`` (leading axis), as one program.

    Vmapped, or with ``sequential`` one item after another (`jax.lax.map`). A
    single item is run as it is: the same values, and XLA:CPU lays out the
    program without a batch axis in less memory (a VGG19 step at 1024 px: 1.30
    against 1.62 GB of temporaries under `jax.vmap`).
    """
    if jax.tree.leaves(items)[0].shape[0] == 1:
        return jax.tree.map(lambda x: x[None], fn(*jax.tree.map(lambda x: x[0], items)))
    if sequential:
        return jax.lax.map(lambda xs: fn(*xs), items)
    return jax.vmap(lambda xs: fn(*xs))(items)


def chunks(model: vgg.VGG, params, images: jax.Array, states, ema_states, targets: losses.Targets,
           weights: losses.Weights, n: jax.Array, *, optimizer: str, ema_decay: float, axes: ItemAxes):
    """`step.chunk` for every item: the images, states, weights and per-item targets have a leading item axis.

    Adam's items are vmapped. L-BFGS's run one after another: under
    `jax.vmap` its line search's loops and branches become selects that run
    every branch for every item until the slowest item is done, which on a CPU
    made a batch cost 2.5 times its items run one by one (BENCHMARKS.md,
    "Batched L-BFGS").

    Returns:
      ``(images, states, ema_states, losses)``, ``losses`` of shape (items, `step.CHUNK`).
    """
    own, rebuild = axes.split(targets)

    def one(image, state, ema_state, content, style, temporal, w):
        return step.chunk(model, params, image, state, ema_state, rebuild(content, style, temporal), w, n,
                          optimizer=optimizer, ema_decay=ema_decay)

    return for_each_item(one, (images, states, ema_states, *own, weights), sequential=optimizer == "lbfgs")


_STATIC = ("model", "optimizer", "ema_decay", "axes")
_DONATED = ("images", "states", "ema_states")
_run_single = jax.jit(chunks, static_argnames=_STATIC, donate_argnames=_DONATED)


@functools.partial(jax.jit, static_argnames=(*_STATIC, "mesh"), donate_argnames=_DONATED)
def _run_batch(model, params, images, states, ema_states, targets, weights, n, *, optimizer, ema_decay, axes, mesh):
    item, shared = P(mesh.axis_names[0]), P()
    target_specs = losses.Targets(content=item if axes.content == 0 else shared,
                                  style=item if axes.style == 0 else shared, masks=shared, kind=targets.kind,
                                  temporal=None if targets.temporal is None else item)

    def local(params, images, states, ema_states, targets, weights, n):  # this device's block of items
        return chunks(model, params, images, states, ema_states, targets, weights, n, optimizer=optimizer,
                      ema_decay=ema_decay, axes=axes)

    out = jax.shard_map(local, mesh=mesh, in_specs=(shared, item, item, item, target_specs, item, shared),
                        out_specs=item, check_vma=False)(params, images, states, ema_states, targets, weights, n)
    # Pin the outputs to the inputs' layout, so that the next chunk's call hits the same compiled program.
    return jax.lax.with_sharding_constraint(out, batch_sharding(mesh))


@functools.partial(jax.jit, static_argnames=(*_STATIC, "mesh"), donate_argnames=_DONATED)
def _run_rows(model, params, images, states, ema_states, targets, weights, n, *, optimizer, ema_decay, axes, mesh):
    shape = images.shape[1:]
    images, states, ema_states = _constrain_rows((images, states, ema_states), shape, mesh)
    rows = P(*([None] * (axes.content == 0)), mesh.axis_names[0])
    content = {name: jax.lax.with_sharding_constraint(t, NamedSharding(mesh, rows))
               for name, t in targets.content.items()}
    out = chunks(model, params, images, states, ema_states, targets.replace(content=content), weights, n,
                 optimizer=optimizer, ema_decay=ema_decay, axes=axes)
    return _constrain_rows(out, shape, mesh)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a program's items live and how its chunk is compiled (see the module docs).

    Attributes:
      kind: "single", "batch" or "rows".
      mesh: the one-axis mesh (None for "single").
    """

    kind: str
    mesh: Mesh | None = None

    @property
    def devices(self) -> int:
        """The item count of a program must be a multiple of this (the batch is split over the devices)."""
        return self.mesh.size if self.kind == "batch" else 1

    def fit(self, model: vgg.VGG, layers: Sequence[str], height: int) -> "Layout":
        """This layout for images of ``height`` rows (rows: at most `fit_row_mesh` devices)."""
        if self.kind != "rows":
            return self
        return Layout("rows", fit_row_mesh(self.mesh, height, model.blocks, layers))

    def share(self, tree: Any) -> Any:
        """Put arrays every item uses (weights, shared targets) where the program reads them.

        A batch layout copies them to every device once; the others leave them to
        the program (a rows layout may use fewer devices for small images, `fit`).
        """
        return jax.device_put(tree, NamedSharding(self.mesh, P())) if self.kind == "batch" else tree

    def place(self, tree: Any, image_shape: tuple[int, ...]) -> Any:
        """Put per-item arrays (leading item axis) as the program returns them, so it compiles once.

        ``image_shape`` is (h, w, 3): the rows of image-shaped leaves are split by a rows layout.
        """
        if self.kind == "batch":
            return jax.device_put(tree, batch_sharding(self.mesh))
        if self.kind == "rows" and image_shape:
            return _place_rows(tree, tuple(image_shape), self.mesh)
        return tree

    def run(self, model: vgg.VGG, params, images, states, ema_states, targets: losses.Targets,
            weights: losses.Weights, n: jax.Array, *, optimizer: str, ema_decay: float, axes: ItemAxes):
        """`chunks`, compiled for this layout; ``images``, ``states`` and ``ema_states`` are donated."""
        program, kwargs = self._program(optimizer=optimizer, ema_decay=ema_decay, axes=axes)
        return program(model, params, images, states, ema_states, targets, weights, n, **kwargs)

    def lower(self, model: vgg.VGG, params, images, states, ema_states, targets: losses.Targets,
              weights: losses.Weights, n: jax.Array, *, optimizer: str, ema_decay: float, axes: ItemAxes):
        """The program `run` would run, lowered and not run (for its text, cost and memory analyses)."""
        program, kwargs = self._program(optimizer=optimizer, ema_decay=ema_decay, axes=axes)
        return program.lower(model, params, images, states, ema_states, targets, weights, n, **kwargs)

    def _program(self, **kwargs):
        if self.kind == "single":
            return _run_single, kwargs
        return (_run_batch if self.kind == "batch" else _run_rows), {**kwargs, "mesh": self.mesh}


def single() -> Layout:
    """One device: the program as it is."""
    return Layout("single")


def batch(devices: Sequence[jax.Device] | None = None) -> Layout:
    """The item axis split over ``devices`` (default: all of this process's devices)."""
    return Layout("batch", batch_mesh(devices))


def rows(devices: Sequence[jax.Device] | None = None) -> Layout:
    """Every image split by rows over ``devices`` (default: all of this process's devices)."""
    return Layout("rows", row_mesh(devices))


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"batch"`` over ``devices`` (default: all of this process's devices)."""
    return Mesh(np.array(jax.local_devices() if devices is None else list(devices)), (BATCH,))


def row_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"rows"`` over ``devices`` (default: all of this process's devices)."""
    return Mesh(np.array(jax.local_devices() if devices is None else list(devices)), (ROWS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split along the first axis over ``mesh``'s devices.

    On a one-device mesh, written ``P()``: that is how XLA returns a compiled
    program's outputs there, and `jax.jit` keys its cache on the spelling, so
    inputs spelled ``P("batch")`` would compile every program twice.
    """
    return NamedSharding(mesh, P(mesh.axis_names[0]) if mesh.size > 1 else P())


def _constrain_rows(tree: Any, image_shape: tuple[int, ...], mesh: Mesh) -> Any:
    """Split the rows of every image-shaped leaf ((..., h, w, 3)) over ``mesh``; replicate the others.

    Inside `jax.jit`, so the row count need not be a multiple of the device
    count (XLA pads the last shard); `jax.device_put` would refuse that.
    """
    def constrain(leaf):
        spec = P()
        if leaf.ndim >= 3 and tuple(leaf.shape[-3:]) == tuple(image_shape):
            spec = P(*([None] * (leaf.ndim - 3)), mesh.axis_names[0])
        return jax.lax.with_sharding_constraint(leaf, NamedSharding(mesh, spec))

    return jax.tree.map(constrain, tree)


@functools.partial(jax.jit, static_argnames=("image_shape", "mesh"), donate_argnames=("tree",))
def _place_rows(tree: Any, image_shape: tuple[int, ...], mesh: Mesh) -> Any:
    """Lay out images and optimiser states as `_run_rows` returns them (compiled by XLA like its outputs)."""
    return _constrain_rows(tree, image_shape, mesh)


def fit_row_mesh(mesh: Mesh, height: int, blocks: Sequence[int], layers: Sequence[str]) -> Mesh:
    """The first devices of ``mesh``, so that each gets at least ``2**p`` rows of the image.

    ``p`` is the number of poolings before the deepest of ``layers`` (4 for
    relu5_1), so every pooling's input keeps at least 2 rows per device. A
    thinner split is all halo and no work; and XLA (checked with jax 0.10.2 on
    CPU) miscompiles a 2x2 pooling of a 4- or 5-row map split over 4 or more
    devices followed by a convolution, returning wrong activations.
    """
    order = plan.layer_names(blocks)
    last = order.index(plan.deepest(blocks, layers)) if layers else 0
    poolings = sum(name.startswith("pool") for name in order[:last])
    fit = max(1, min(mesh.size, height // 2 ** poolings))
    return mesh if fit == mesh.size else Mesh(mesh.devices.reshape(-1)[:fit], mesh.axis_names)
