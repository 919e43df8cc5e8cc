r"""Style statistics of a huge style image, computed in horizontal strips.

A Gram matrix is a sum over positions,

.. math:: G = \frac{1}{M} \sum_{k=1}^{M} F_k F_k^\top
            = \frac{1}{M} \sum_{s} \sum_{k \in \mathrm{strip}\ s} F_k F_k^\top,

so the style targets of an image whose activations do not fit in memory can
be summed strip by strip, holding one strip's activations at a time.

The activations of the rows of a strip depend on the pixels around it (the
receptive field), so each strip is run through the network with `halo_rows`
extra rows above and below, and only the rows that belong to the strip are
summed. The halo covers the receptive field of the deepest layer, and strips
start at multiples of the total pooling factor (16 for relu5_1), so that every
pooling window of a strip is one of the whole image's. The kept rows are then
exactly the whole image's rows: the sum equals the unchunked statistics up to
float rounding (tests/test_speed.py checks it with the real VGG19).

Mean and covariance (``kind="mean_cov"``) are combined with the pairwise
update of Chan, Golub & LeVeque, which stays accurate when the mean is large
compared with the spread, unlike :math:`E[ff^\top] - \mu\mu^\top`.

References:
  Chan, Golub & LeVeque, "Algorithms for Computing the Sample Variance:
  Analysis and Recommendations", The American Statistician 37(3), 1983.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxstyle import vgg

# `optimize.compute_targets` computes a style image in strips above this many pixels.
MAX_PIXELS = 2**22  # 4.2 megapixels, e.g. 2048 x 2048: about 3 GiB of VGG19 activations at once
# Pixels of a strip's own rows (halo excluded), which bounds its activations' memory.
STRIP_PIXELS = 2**21


def row_scale(blocks: Sequence[int], layer: str) -> int:
    """Image rows per row of ``layer``: 2 to the number of poolings up to and including it."""
    order = vgg.layer_names(blocks)
    return 2 ** sum(name.startswith("pool") for name in order[: order.index(layer) + 1])


def halo_rows(blocks: Sequence[int], layers: Sequence[str]) -> int:
    """Rows of context above and below a strip that make its deepest layer exact.

    Each 3x3 convolution and each 2x2 pooling widens the receptive field by
    one row of its input on each side, and a row of the input of a layer
    after ``p`` poolings is ``2**p`` image rows. The sum is rounded up to a
    multiple of the deepest layer's `row_scale`. For VGG19 up to relu5_1 it is
    85 rows, rounded to 96.
    """
    order = vgg.layer_names(blocks)
    deepest = max(layers, key=order.index)
    rows, scale = 0, 1
    for name in order[: order.index(deepest) + 1]:
        if name.startswith(("conv", "pool")):
            rows += scale
        if name.startswith("pool"):
            scale *= 2
    return math.ceil(rows / scale) * scale


def strip_rows(width: int, blocks: Sequence[int], layers: Sequence[str], pixels: int = STRIP_PIXELS) -> int:
    """Own rows of a strip of about ``pixels`` pixels of an image ``width`` wide.

    A multiple of the deepest layer's `row_scale`, and at least the halo, so
    that a strip computes at most three times its own rows.
    """
    order = vgg.layer_names(blocks)
    align = row_scale(blocks, max(layers, key=order.index))
    return max(halo_rows(blocks, layers), pixels // max(width, 1) // align * align)


def style_statistics(model: vgg.VGG, params, image: jax.Array, layers: Sequence[str], kind: str = "gram",
                     masks: Mapping[str, jax.Array] | None = None, *, rows: int | None = None) -> dict:
    """`losses.style_statistics` of every layer of one image, summed over horizontal strips.

    Pure and jit-safe: the strips away from the image's top and bottom, all of
    one shape, run in a `jax.lax.fori_loop` (one strip's activations alive at
    a time); the few at the edges, each of its own shape, run before and after.

    Args:
      model, params: the network.
      image: RGB in [0, 1], (h, w, 3).
      layers: the style layers.
      kind: "gram" (Gram matrices) or "mean_cov" (mean and covariance).
      masks: optional layer name -> (h_l, w_l) weights of that layer's
        positions, at the layer's resolution for the whole image (as
        `optimize.compute_targets` makes them).
      rows: rows of image per strip, a multiple of the pooling factor of the
        deepest layer (default: `strip_rows`, about `STRIP_PIXELS` pixels).
    Returns:
      layer name -> Gram matrix (c, c), or ``(mean (c,), covariance (c, c))``,
      float32, equal to `losses.style_statistics` of the whole image's
      activations up to rounding.
    Raises:
      ValueError: ``rows`` is not a positive multiple of the pooling factor.
    """
    if kind not in ("gram", "mean_cov"):
        raise ValueError(f"unknown style statistics {kind!r}; expected 'gram' or 'mean_cov'")
    order = vgg.layer_names(model.blocks)
    layers = tuple(layers)
    align = row_scale(model.blocks, max(layers, key=order.index))
    halo = halo_rows(model.blocks, layers)
    h, w = image.shape[:2]
    rows = strip_rows(w, model.blocks, layers) if rows is None else rows
    if rows <= 0 or rows % align:
        raise ValueError(f"`rows` must be a positive multiple of {align} (rows of the image per row of the "
                         f"deepest layer), got {rows}")
    scale = {name: row_scale(model.blocks, name) for name in layers}
    full = jax.eval_shape(lambda x: model.apply({"params": params}, x, layers), image)

    def sums(start, top, size: int, keep: int, first: int) -> dict:
        """The sums of one strip: input rows [top, top + size), own rows [start, start + keep).

        ``first = start - top`` and ``keep`` are static; ``start`` and ``top``
        may be traced (in the loop). ``first`` is a multiple of every layer's
        row scale, so the own rows of a layer are rows ``first // s`` to
        ``(first + keep) // s`` of the strip's activations (the floor is the
        network's: a last strip's odd rows are dropped by pooling as the
        whole image's are).
        """
        feats = model.apply({"params": params}, jax.lax.dynamic_slice_in_dim(image, top, size, axis=0), layers)
        out = {}
        for name in layers:
            s = scale[name]
            n = (first + keep) // s - first // s
            f = jax.lax.slice_in_dim(feats[name], first // s, first // s + n, axis=0)
            f = f.reshape(-1, f.shape[-1])
            f = f.astype(jnp.promote_types(f.dtype, jnp.float32))  # accumulate in float32, as losses do
            if masks is None:
                m = jnp.ones((f.shape[0], 1), f.dtype)
            else:
                m = jax.lax.dynamic_slice_in_dim(masks[name], start // s, n, axis=0).reshape(-1, 1).astype(f.dtype)
            out[name] = _moments(f, m, kind)
        return out

    def geometry(i: int) -> tuple[int, int, int, int, int]:
        """Strip ``i``: (start, top, size, keep, first), all static."""
        start, stop = i * rows, min((i + 1) * rows, h)
        top, bottom = max(0, start - halo), min(h, stop + halo)
        return start, top, bottom - top, stop - start, start - top

    n_strips = math.ceil(h / rows)
    # Strips whose halo fits inside the image all have one shape: they run in a loop.
    inner = [i for i in range(n_strips) if i * rows >= halo and (i + 1) * rows + halo <= h]
    acc = None
    for i in [i for i in range(n_strips) if i not in inner] + inner[:1]:
        part = sums(*geometry(i))
        acc = part if acc is None else _combine(acc, part, kind)
    if len(inner) > 1:
        acc = jax.lax.fori_loop(
            inner[1], inner[-1] + 1,
            lambda i, acc: _combine(acc, sums(i * rows, i * rows - halo, rows + 2 * halo, rows, halo), kind), acc)
    return {name: _finish(acc[name], kind, masks is None, full[name].shape) for name in layers}


def _moments(f: jax.Array, m: jax.Array, kind: str):
    """A strip's sums: weight and Gram sum, or weight, mean and centred scatter matrix (Chan et al.)."""
    n = jnp.sum(m)
    if kind == "gram":
        return n, jnp.matmul(f.T, f * m, precision=jax.lax.Precision.HIGHEST)
    mean = jnp.sum(f * m, axis=0) / jnp.maximum(n, 1e-30)
    centred = f - mean
    return n, mean, jnp.matmul(centred.T, centred * m, precision=jax.lax.Precision.HIGHEST)


def _combine(a: dict, b: dict, kind: str) -> dict:
    out = {}
    for name in a:
        if kind == "gram":
            out[name] = (a[name][0] + b[name][0], a[name][1] + b[name][1])
            continue
        (na, ma, ca), (nb, mb, cb) = a[name], b[name]
        n = na + nb
        delta = mb - ma
        frac = nb / jnp.maximum(n, 1e-30)
        out[name] = (n, ma + delta * frac, ca + cb + jnp.outer(delta, delta) * na * frac)
    return out


def _finish(acc, kind: str, unmasked: bool, shape: Sequence[int]):
    """The statistics from the sums, normalised exactly as `losses.gram_matrix` and `mean_covariance` do."""
    if kind == "gram":
        n, s = acc
        return s / (shape[0] * shape[1]) if unmasked else s / (n + 1e-8)
    n, mean, scatter = acc
    total = n + 1e-8
    return mean * (n / total), scatter / total
