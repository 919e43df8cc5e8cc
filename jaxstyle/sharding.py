"""Spreading the work over devices: the batch axis, or the rows of one image.

Two layouts, each a one-axis `jax.sharding.Mesh`:

- ``"batch"`` (`batch_mesh`): a batch of images or of sweep points is split
  over the devices, one slice of the batch per device (data parallelism).
  Images are independent, so nothing crosses devices but the (replicated)
  network weights and style targets.
- ``"rows"`` (`row_mesh`): one image is split by rows over the devices
  (spatial parallelism), for images whose activations do not fit on one
  device. XLA's SPMD partitioner exchanges the halo rows each 3x3 convolution
  and 2x2 pooling needs, and turns every sum over positions (the Gram matrix
  :math:`F^\\top F / M`, the content and total-variation means) into per-device
  partial sums plus an all-reduce. So the losses are those of the whole image,
  exactly, and there are no tiling seams.

The same code runs on one CPU (a mesh of one device), 8 GPUs or a TPU slice.
Meshes cover this process's devices only (`jax.local_devices`): with several
processes (`jax.distributed`), each process runs its own share of the images
and no array spans hosts.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxstyle import losses, optimize, vgg

BATCH = "batch"
ROWS = "rows"


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"batch"`` over ``devices`` (default: all of this process's devices)."""
    return Mesh(np.array(jax.local_devices() if devices is None else list(devices)), (BATCH,))


def row_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"rows"`` over ``devices`` (default: all of this process's devices)."""
    return Mesh(np.array(jax.local_devices() if devices is None else list(devices)), (ROWS,))


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf of ``tree`` on ``mesh``, split along its first (batch) axis.

    The batch size must be a multiple of the mesh's size (`stylize_batch` pads it).
    """
    return jax.device_put(tree, batch_sharding(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split along the first axis over ``mesh``'s devices.

    On a one-device mesh, written ``P()``: that is how XLA returns a compiled
    program's outputs there, and `jax.jit` keys its cache on the spelling, so
    inputs spelled ``P("batch")`` would compile every program twice.
    """
    return NamedSharding(mesh, P(mesh.axis_names[0]) if mesh.size > 1 else P())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf of ``tree`` on all devices of ``mesh`` (a full copy on each)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


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
def place_rows(tree: Any, image_shape: tuple[int, ...], mesh: Mesh) -> Any:
    """Lay out an image and its optimiser state as `run_chunk_rows` returns them.

    Compiled by XLA like the chunk's outputs, so the first chunk's inputs have
    the same shardings as every later chunk's, and the chunk compiles once.
    """
    return _constrain_rows(tree, image_shape, mesh)


def _chunk_rows(model: vgg.VGG, params, image: jax.Array, state, ema_state, targets: losses.Targets,
                weights: losses.Weights, n: jax.Array, *, optimizer: str, ema_decay: float, mesh: Mesh):
    """`optimize._chunk` with the image, its optimiser state and the content targets split by rows."""
    image, state, ema_state = _constrain_rows((image, state, ema_state), image.shape, mesh)
    content = {name: jax.lax.with_sharding_constraint(t, NamedSharding(mesh, P(mesh.axis_names[0])))
               for name, t in targets.content.items()}
    targets = targets.replace(content=content)
    image, state, ema_state, history = optimize._chunk(model, params, image, state, ema_state, targets, weights,
                                                       n, optimizer=optimizer, ema_decay=ema_decay)
    return _constrain_rows((image, state, ema_state, history), image.shape, mesh)


run_chunk_rows = jax.jit(_chunk_rows, static_argnames=("model", "optimizer", "ema_decay", "mesh"),
                         donate_argnames=("image", "state", "ema_state"))


def chunk_rows(model: vgg.VGG, params, image: jax.Array, state, ema_state, targets: losses.Targets,
               weights: losses.Weights, n: jax.Array, *, optimizer: str, ema_decay: float, mesh: Mesh):
    """`optimize._run_chunk` for one image split by rows over ``mesh`` (what `optimize.stylize` calls).

    Uses at most `fit_row_mesh` devices, and lays out the inputs as the
    program returns them, so that it compiles once per shape.
    """
    mesh = fit_row_mesh(mesh, image.shape[0], model, optimize._layers(targets))
    image, state, ema_state = place_rows((image, state, ema_state), image.shape, mesh)
    return run_chunk_rows(model, params, image, state, ema_state, targets, weights, n,
                          optimizer=optimizer, ema_decay=ema_decay, mesh=mesh)


def fit_row_mesh(mesh: Mesh, height: int, model: vgg.VGG, layers: Sequence[str]) -> Mesh:
    """The first devices of ``mesh``, so that each gets at least ``2**p`` rows of the image.

    ``p`` is the number of poolings before the deepest of ``layers`` (4 for
    relu5_1), so every pooling's input keeps at least 2 rows per device. A
    thinner split is all halo and no work; and XLA (checked with jax 0.10.2 on
    CPU) miscompiles a 2x2 pooling of a 4- or 5-row map split over 4 or more
    devices followed by a convolution, returning wrong activations.
    """
    order = vgg.layer_names(model.blocks)
    deepest = max((order.index(n) for n in layers), default=0)
    poolings = sum(name.startswith("pool") for name in order[:deepest])
    fit = max(1, min(mesh.size, height // 2 ** poolings))
    return mesh if fit == mesh.size else Mesh(mesh.devices.reshape(-1)[:fit], mesh.axis_names)
