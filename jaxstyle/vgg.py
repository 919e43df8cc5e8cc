"""The VGG network (Simonyan & Zisserman, 2014) as one configurable Flax module.

The network is a feature extractor: ``VGG.apply(params, image, layers=...)``
returns a dict of the activations asked for, keyed by the names used in the
style-transfer papers (``conv1_1``, ``relu1_1``, ``pool1``, ... ``relu5_4``),
and stops computing after the deepest of them.

Parameters are an explicit pytree, ``{"conv1_1": {"kernel": (3, 3, in, out),
"bias": (out,)}, ...}``, passed to ``apply``: the module never loads weights
itself. Real weights come from :mod:`jaxstyle.weights`.

References:
  Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale
  Image Recognition", ICLR 2015.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstyle.config import PADDING, POOLING
# The network's names and architectures are plain arithmetic, shared with the planning code.
from jaxstyle.plan import (ARCHITECTURES, PREPROCESSING, VGG16_BLOCKS, VGG19_BLOCKS, VGG_WIDTHS,  # noqa: F401
                           conv_names, layer_names)

# Per-channel means and scales of the two preprocessing conventions a weights
# file can record. Caffe (the original VGG release, and Keras): BGR, 0-255,
# minus the mean pixel. torchvision (retrained weights): RGB in [0, 1],
# standardised.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


def preprocess(image: jax.Array, preprocessing: str) -> jax.Array:
    """Turn RGB in [0, 1] into the input convention the weights were trained with.

    Args:
      image: RGB in [0, 1], shape (..., 3).
      preprocessing: "caffe" (BGR, 0-255, minus the mean pixel) or
        "torchvision" (RGB, minus mean, divided by std).
    Returns:
      The network input, same shape.
    """
    if preprocessing == "caffe":
        return image[..., ::-1] * 255.0 - jnp.asarray(CAFFE_MEAN_BGR, image.dtype)
    if preprocessing == "torchvision":
        mean = jnp.asarray(TORCHVISION_MEAN, image.dtype)
        return (image - mean) / jnp.asarray(TORCHVISION_STD, image.dtype)
    raise ValueError(f"unknown preprocessing {preprocessing!r}; expected one of {PREPROCESSING}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv3x3(x: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], ...]) -> jax.Array:
    """Stride-1 NHWC/HWIO convolution whose input gradient stays on XLA:CPU's fast path.

    The gradient with respect to the input is itself a convolution, of the
    output gradient with the kernel flipped in space and with in/out swapped.
    Inside a `lax.fori_loop`, XLA:CPU folds that flip and swap into the
    convolution's dimension labels and then runs it 4-6 times slower than the
    forward convolution (measured: 0.25 s against 0.04 s per step of a
    four-layer test). Computing the swapped kernel behind an optimisation
    barrier keeps every convolution in the fast layout; the values are the
    same as `lax.conv_general_dilated`'s own gradient.
    """
    return _conv(x, kernel, padding)


# Maps with fewer positions than this are convolved as a matrix product of patches.
SMALL_MAP = 12


def _conv(x: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], ...]) -> jax.Array:
    """Stride-1 NHWC/HWIO convolution; on maps of under `SMALL_MAP` positions, as patches times kernel.

    XLA:CPU's convolution is up to 30 times slower on such tiny maps (block 5
    of a 64 px image is 2x4 positions: 16 ms against 0.6 ms for 4x8, with 512
    channels; jax 0.10.2), while the same products as one matrix
    multiplication (im2col) take 1 ms. The values are equal up to float32 rounding.
    """
    if x.shape[1] * x.shape[2] >= SMALL_MAP:
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DN)
    patches = jax.lax.conv_general_dilated_patches(x, kernel.shape[:2], (1, 1), padding, dimension_numbers=_DN)
    # Patches are ordered (input channel, kernel row, kernel column), channel slowest.
    matrix = kernel.transpose(2, 0, 1, 3).reshape(-1, kernel.shape[-1])
    return jnp.einsum("nhwk,ko->nhwo", patches, matrix.astype(patches.dtype))


_DN = ("NHWC", "HWIO", "NHWC")


def _conv3x3_fwd(x, kernel, padding):
    return _conv3x3(x, kernel, padding), (x, kernel)


def _conv3x3_bwd(padding, residuals, g):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    flipped = jax.lax.optimization_barrier(jnp.flip(kernel, (0, 1)).swapaxes(2, 3))
    grad_padding = ((kh - 1 - padding[0][0], kh - 1 - padding[0][1]),
                    (kw - 1 - padding[1][0], kw - 1 - padding[1][1]))
    dx = _conv(g, flipped, grad_padding)
    # The kernel gradient is not needed for style transfer (XLA drops it), but
    # keeps the function correct for any use.
    _, kernel_vjp = jax.vjp(lambda k: jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=_DN),
                            kernel)
    return dx, kernel_vjp(g)[0]


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def _conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                          dimension_numbers=None, **unused):
    """`nn.Conv`'s hook: the VGG convolutions (stride 1, no dilation) through `_conv3x3`."""
    if tuple(window_strides) != (1, 1) or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
        raise NotImplementedError("VGG convolutions have stride 1 and no dilation")
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    return _conv3x3(lhs, rhs, tuple(tuple(p) for p in padding))


class VGG(nn.Module):
    """VGG feature extractor for one image.

    Attributes:
      blocks: convolutions per block; (2, 2, 4, 4, 4) is VGG19.
      widths: output channels of each block's convolutions.
      pooling: "max" as trained, or "avg" (Gatys et al. prefer it for image
        synthesis).
      avg_pool_scale: multiply average-pooled activations by this factor. An
        average of ReLU outputs is smaller than their max; rescaling keeps the
        deeper activations (and so the losses' balance) at the magnitude the
        network was trained with. 1.0 is plain average pooling.
      first_padding: "zeros" (as trained) or "replicate" (edge pixels repeated
        for the first convolution only, which reduces dark borders in outputs).
      preprocessing: the input convention of the weights; see `preprocess`.
      dtype: compute dtype of the convolutions (parameters stay float32).
      remat: recompute each block's activations in the backward pass instead
        of storing them (`jax.checkpoint`), trading time for memory.
      strip_pixels: with ``remat``, image pixels per strip of the first blocks
        when the optimisation runs them strip by strip (`jaxstyle.strips`; 0:
        `plan.REMAT_PIXELS`). The network itself does not read it.
    """

    blocks: Sequence[int] = VGG19_BLOCKS
    widths: Sequence[int] = VGG_WIDTHS
    pooling: str = "max"
    avg_pool_scale: float = 1.0
    first_padding: str = "zeros"
    preprocessing: str = "caffe"
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    strip_pixels: int = 0

    def setup(self):
        # One attribute per convolution, so the parameter tree is flat and
        # keyed by the paper's names: {"conv1_1": {"kernel", "bias"}, ...}.
        for name in conv_names(self.blocks):
            width = self.widths[int(name[4]) - 1]
            # With replicate padding, conv1_1 gets its border from `_block`.
            replicate = name == "conv1_1" and self.first_padding == "replicate"
            padding = "VALID" if replicate else "SAME"
            setattr(self, name, nn.Conv(width, (3, 3), padding=padding, dtype=self.dtype, name=name,
                                        conv_general_dilated=_conv_general_dilated))

    def __call__(self, image: jax.Array, layers: Sequence[str], *, start: str | None = None) -> dict[str, jax.Array]:
        """Activations of ``layers`` for one image.

        Args:
          image: RGB in [0, 1], shape (h, w, 3). Batches use `jax.vmap`.
          layers: names from `layer_names(self.blocks)`; the forward pass
            stops at the deepest one.
          start: optional pooling layer, e.g. "pool2": ``image`` is then that
            layer's activation (h', w', c) and the forward pass runs from the
            next block on, so a network can be computed in pieces
            (`jaxstyle.strips`). ``layers`` must come after it.
        Returns:
          dict mapping each requested name to its activation, (h', w', c).
        Raises:
          ValueError: a name is not a layer of this network, or ``start`` is
            not a pooling layer before every one of ``layers``.
        """
        order = layer_names(self.blocks)
        if not layers:
            raise ValueError("no layers asked for; name at least one, e.g. relu4_2")
        unknown = sorted(set(layers) - set(order))
        if unknown:
            raise ValueError(f"unknown VGG layer(s) {unknown}; this network has {', '.join(order)}")
        deepest = max(order.index(name) for name in layers)

        if start is None:
            first, x = 1, preprocess(image, self.preprocessing)[None].astype(self.dtype)
        else:
            if start not in order or not start.startswith("pool") or \
                    min(order.index(name) for name in layers) <= order.index(start):
                raise ValueError(f"`start` must be a pooling layer before every layer asked for, got {start!r} "
                                 f"for layers {list(layers)}")
            first, x = int(start[4:]) + 1, image[None].astype(self.dtype)
        block = nn.remat(_block, static_argnums=(2, 3)) if self.remat else _block
        acts = {}
        for b in range(first, len(self.blocks) + 1):
            if order[deepest] in acts:
                break
            # Each block returns its activations by name, stopping at `last`.
            last = min(order[deepest], f"pool{b}", key=order.index)
            block_acts = block(self, x, b, last)
            acts.update(block_acts)
            x = block_acts[f"pool{b}"] if f"pool{b}" in block_acts else x
        return {name: acts[name][0] for name in layers}


def _block(vgg: VGG, x: jax.Array, b: int, last: str) -> dict[str, jax.Array]:
    """Block ``b``: n times (3x3 conv, ReLU), then 2x2 pooling; stops after ``last``."""
    acts = {}
    for i in range(1, vgg.blocks[b - 1] + 1):
        if b == 1 and i == 1 and vgg.first_padding == "replicate":
            # Departure from the trained net: edge pixels, not zeros, around the image.
            x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        x = getattr(vgg, f"conv{b}_{i}")(x)
        acts[f"conv{b}_{i}"] = x
        if last == f"conv{b}_{i}":
            return acts
        x = nn.relu(x)
        acts[f"relu{b}_{i}"] = x
        if last == f"relu{b}_{i}":
            return acts
    if vgg.pooling not in POOLING or vgg.first_padding not in PADDING:
        raise ValueError(f"unknown pooling {vgg.pooling!r} or padding {vgg.first_padding!r}; "
                         f"expected one of {POOLING} and one of {PADDING}")
    x = pool2x2(x, vgg.pooling)
    acts[f"pool{b}"] = x * vgg.avg_pool_scale if vgg.pooling == "avg" else x
    return acts


def pool2x2(x: jax.Array, pooling: str) -> jax.Array:
    """2x2 max or average pooling with stride 2 of (..., h, w, c); an odd last row or column is dropped.

    The same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))`` (VALID
    padding), written as a reshape and a reduction over the two window axes.
    XLA:CPU runs that and its gradient (a comparison with the broadcast
    maximum) as plain fused loops, where ``reduce_window``'s gradient, a
    variadic reduce-window with index tracking and a scatter, took about 10%
    of a VGG19 step (BENCHMARKS.md). Where a window has several maxima the
    gradient is shared equally among them (``reduce_window`` gives it to one);
    both are subgradients, and after a ReLU such ties are windows of zeros,
    whose gradient the ReLU discards anyway.
    """
    *lead, h, w, c = x.shape
    windows = x[..., : h // 2 * 2, : w // 2 * 2, :].reshape(*lead, h // 2, 2, w // 2, 2, c)
    return jnp.max(windows, axis=(-4, -2)) if pooling == "max" else jnp.mean(windows, axis=(-4, -2))


VGG19 = functools.partial(VGG, blocks=VGG19_BLOCKS, widths=VGG_WIDTHS)
VGG16 = functools.partial(VGG, blocks=VGG16_BLOCKS, widths=VGG_WIDTHS)


def init_params(architecture: str, key: jax.Array) -> dict:
    """Random parameters (Flax's default initialisers) for ``architecture``.

    For tests and for shapes; style transfer needs trained weights.
    """
    blocks, widths = ARCHITECTURES[architecture]
    model = VGG(blocks=blocks, widths=widths)
    image = jnp.zeros((32, 32, 3), jnp.float32)
    return model.init(key, image, layer_names(blocks))["params"]
