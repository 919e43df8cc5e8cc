r"""The network over horizontal strips of an image: style targets of huge images, low-memory steps.

A Gram matrix is a sum over positions,

.. math:: G = \frac{1}{M} \sum_{k=1}^{M} F_k F_k^\top
            = \frac{1}{M} \sum_{s} \sum_{k \in \mathrm{strip}\ s} F_k F_k^\top,

so the style statistics of an image whose activations do not fit in memory
can be summed strip by strip, holding one strip's activations at a time.

The activations of the rows of a strip depend on the pixels around it (the
receptive field), so each strip is run through the network with `halo_rows`
extra rows above and below, and only the rows that belong to the strip are
summed. The halo covers the receptive field of the deepest layer, and strips
start at multiples of the total pooling factor (16 for relu5_1), so that every
pooling window of a strip is one of the whole image's. The kept rows are then
exactly the whole image's rows: the sum equals the unchunked statistics up to
float rounding (tests/test_speed.py checks it with the real VGG19).

The same holds for the gradient. Since the style loss depends on a layer's
activations only through such sums, the gradient with respect to the pixels
is a sum over strips too, and `content_and_style` wraps each strip in
`jax.checkpoint`: under `jax.grad`, the backward pass recomputes one strip at
a time instead of keeping the whole image's activations. With ``split`` only
the first blocks (high resolution: where the memory is) run in strips, with a
small halo (32 rows up to pool3), and the deep blocks run on the whole image. That is what
``--remat`` does to a step (`step.content_and_style`).

Mean and covariance (``kind="mean_cov"``) are combined with the pairwise
update of Chan, Golub & LeVeque, which stays accurate when the mean is large
compared with the spread, unlike :math:`E[ff^\top] - \mu\mu^\top`.

References:
  Chan, Golub & LeVeque, "Algorithms for Computing the Sample Variance:
  Analysis and Recommendations", The American Statistician 37(3), 1983.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxstyle import losses, plan, vgg
from jaxstyle.plan import STRIP_PIXELS, halo_rows, row_scale, stage_rows, strip_rows

def style_statistics(model: vgg.VGG, params, image: jax.Array, layers: Sequence[str], kind: str = "gram",
                     masks: Mapping[str, jax.Array] | None = None, *, rows: int | None = None) -> dict:
    """`losses.style_statistics` of every layer of one image, summed over horizontal strips.

    Args:
      model, params: the network.
      image: RGB in [0, 1], (h, w, 3).
      layers: the style layers.
      kind: "gram" (Gram matrices) or "mean_cov" (mean and covariance).
      masks: optional layer name -> (h_l, w_l) weights of that layer's
        positions, at the layer's resolution for the whole image (as
        `step.layer_masks` makes them).
      rows: rows of image per strip (see `content_and_style`).
    Returns:
      layer name -> Gram matrix (c, c), or ``(mean (c,), covariance (c, c))``,
      float32, equal to `losses.style_statistics` of the whole image's
      activations up to rounding.
    """
    return content_and_style(model, params, image, (), layers, kind, (masks,), rows=rows)[1][0]


def content_and_style(model: vgg.VGG, params, image: jax.Array, content_layers: Sequence[str],
                      style_layers: Sequence[str], kind: str = "gram",
                      masks: Sequence[Mapping[str, jax.Array] | None] = (None,), *,
                      rows: int | None = None, pixels: int = STRIP_PIXELS,
                      splits: Sequence[str] = ()) -> tuple[dict, tuple[dict, ...]]:
    """The content activations and style statistics of one image, computed strip by strip.

    All the style-transfer objective needs of the network
    (`losses.loss_terms_of_statistics`), with one strip's activations alive at
    a time, also under `jax.grad`: each strip's forward pass is wrapped in
    `jax.checkpoint`, so the backward pass recomputes the strips one by one
    instead of keeping every activation of the image. That is rematerialisation
    over space, where ``VGG(remat=True)`` rematerialises over depth.

    Pure and jit-safe: the strips away from the input's top and bottom, all of
    one shape, run in a `jax.lax.scan`; the few at the edges, each of its own
    shape, run around it.

    Args:
      model, params: the network.
      image: RGB in [0, 1], (h, w, 3).
      content_layers: layers whose activations are returned whole (these are
        small for the usual deep content layers).
      style_layers: layers whose statistics are returned.
      kind: "gram" (Gram matrices) or "mean_cov" (mean and covariance).
      masks: one entry per style region: None (every position) or layer name
        -> (h_l, w_l) weights of that layer's positions for the whole image.
      rows: without ``splits``, rows of the image per strip, a multiple of
        the pooling factor of the deepest layer (default: `strip_rows` of
        ``pixels``).
      pixels: about how many pixels of the image a strip covers (its own rows).
      splits: pooling layers, e.g. ("pool2", "pool3"), that cut the network
        into stages: the first runs in strips of the image, each next one in
        strips of the activation the one before ends with, and the layers
        after the last split run on the whole of its activation. The first
        blocks hold most of the memory (high resolution), and a stage's halo
        is small (12 rows of the image up to pool2, 6 rows of pool2 up to
        pool3, against 96 image rows up to relu5_1). Without ``splits`` all
        the layers run in strips of the image.
    Returns:
      ``(content, style)``: layer name -> activations (h_l, w_l, c) as
      ``model.apply`` gives them, and per region, layer name -> Gram matrix
      (c, c) or ``(mean (c,), covariance (c, c))``, float32; equal to the whole
      image's up to rounding.
    Raises:
      ValueError: ``rows`` is not a positive multiple of the pooling factor,
        or a split is not a pooling layer.
    """
    if kind not in ("gram", "mean_cov"):
        raise ValueError(f"unknown style statistics {kind!r}; expected 'gram' or 'mean_cov'")
    order = plan.layer_names(model.blocks)
    if any(split not in order or not split.startswith("pool") for split in splits) or \
            list(splits) != sorted(set(splits), key=order.index):
        raise ValueError(f"`splits` must be pooling layers of this network in forward order, got {list(splits)}")
    content_layers, style_layers = tuple(content_layers), tuple(style_layers)
    if not splits:
        return _in_strips(model, params, image, None, content_layers, style_layers, kind, masks,
                          strip_rows(image.shape[1], model.blocks, (*content_layers, *style_layers), pixels)
                          if rows is None else rows)
    content, style = {}, tuple({} for _ in masks)
    x, start = image, None
    for split in (*splits, None):  # None: the last stage, whole
        after = plan.layers_after(model.blocks, start)
        stage = (lambda names: tuple(n for n in names if n in after and (
            split is None or after.index(n) <= after.index(split))))  # noqa: E731
        deeper = split is not None and any(after.index(n) > after.index(split)
                                           for n in (*content_layers, *style_layers) if n in after)
        stage_content = tuple(dict.fromkeys(stage(content_layers) + (split,) * deeper))
        if split is None:
            part = at_once(model, params, x, start, stage_content, stage(style_layers), kind, masks)
        else:
            part = _in_strips(model, params, x, start, stage_content, stage(style_layers), kind, masks,
                              stage_rows(model.blocks, x.shape[1], split, start, pixels))
        content.update(part[0])
        style = tuple({**a, **b} for a, b in zip(style, part[1]))
        if not deeper:
            break
        x, start = content[split] if split in content_layers else content.pop(split), split
    return content, style


def at_once(model: vgg.VGG, params, x: jax.Array, start: str | None, content_layers: tuple[str, ...],
            style_layers: tuple[str, ...], kind: str = "gram",
            masks: Sequence[Mapping[str, jax.Array] | None] = (None,)) -> tuple[dict, tuple[dict, ...]]:
    """`content_and_style` without strips: the layers after ``start`` from the whole of its activation ``x``.

    ``start=None``: ``x`` is the image. Either layer tuple may be empty.
    """
    layers = tuple(dict.fromkeys(content_layers + style_layers))
    if not layers:
        return {}, tuple({} for _ in masks)
    feats = model.apply({"params": params}, x, layers, start=start)
    return {name: feats[name] for name in content_layers}, losses.region_statistics(feats, style_layers, kind, masks)


def _in_strips(model: vgg.VGG, params, x: jax.Array, start: str | None, content_layers: tuple[str, ...],
               style_layers: tuple[str, ...], kind: str, masks, rows: int) -> tuple[dict, tuple[dict, ...]]:
    """`content_and_style`'s result for the layers after ``start``, from ``x`` in strips of ``rows`` rows."""
    layers = tuple(dict.fromkeys(content_layers + style_layers))
    after = plan.layers_after(model.blocks, start)
    align = row_scale(model.blocks, max(layers, key=after.index), start)
    halo = halo_rows(model.blocks, layers, start)
    if rows <= 0 or rows % align:
        raise ValueError(f"`rows` must be a positive multiple of {align} (rows of the input per row of the "
                         f"deepest layer), got {rows}")
    h = x.shape[0]
    full = jax.eval_shape(lambda x: model.apply({"params": params}, x, layers, start=start), x)
    # Under jax.grad, keep only each strip's inputs and recompute its activations in the backward pass.
    strip = jax.checkpoint(functools.partial(_strip, model, params, start, content_layers, style_layers, kind, masks),
                           static_argnums=(3, 4, 5))

    def geometry(i: int) -> tuple[int, int, int, int, int]:
        """Strip ``i``: (top_row, top, size, keep, first), all static."""
        top_row, stop = i * rows, min((i + 1) * rows, h)
        top, bottom = max(0, top_row - halo), min(h, stop + halo)
        return top_row, top, bottom - top, stop - top_row, top_row - top

    def combine(a, b):
        return tuple(_combine(u, v, kind) for u, v in zip(a, b))

    n_strips = math.ceil(h / rows)
    # Strips whose halo fits inside the input all have one shape: they run in a loop. (The first
    # strip is never one of them: it starts the sums.)
    looped = [i for i in range(n_strips) if i * rows >= halo and (i + 1) * rows + halo <= h]
    pieces, acc = {}, None  # strip index -> its content rows; the running sums
    for i in range(n_strips):
        if i not in looped:
            pieces[i], sums = strip(x, *geometry(i))
            acc = sums if acc is None else combine(acc, sums)
    if looped:
        def body(acc, i):
            content, sums = strip(x, i * rows, i * rows - halo, rows + 2 * halo, rows, halo)
            return combine(acc, sums), content

        acc, stacked = jax.lax.scan(body, acc, jnp.arange(looped[0], looped[-1] + 1))
        pieces[looped[0]] = {name: a.reshape(-1, *a.shape[2:]) for name, a in stacked.items()}
    content = {name: jnp.concatenate([pieces[i][name] for i in sorted(pieces)], axis=0) for name in content_layers}
    style = tuple({name: _finish(sums[name], kind, region is None, full[name].shape) for name in style_layers}
                  for sums, region in zip(acc, masks))
    return content, style


def _strip(model: vgg.VGG, params, start: str | None, content_layers: tuple[str, ...], style_layers: tuple[str, ...],
           kind: str, masks, x: jax.Array, top_row, top, size: int, keep: int, first: int):
    """One strip: input rows [top, top + size), own rows [top_row, top_row + keep).

    ``first = top_row - top`` and ``keep`` are static; ``top_row`` and ``top``
    may be traced (in the loop). ``first`` is a multiple of every layer's
    row scale, so the own rows of a layer are rows ``first // s`` to
    ``(first + keep) // s`` of the strip's activations (the floor is the
    network's: a last strip's odd rows are dropped by pooling as the
    whole input's are). Returns the own rows of the content layers and
    each region's sums (`_moments`).
    """
    layers = tuple(dict.fromkeys(content_layers + style_layers))
    scale = {name: row_scale(model.blocks, name, start) for name in layers}
    feats = model.apply({"params": params}, jax.lax.dynamic_slice_in_dim(x, top, size, axis=0), layers, start=start)
    own = {name: jax.lax.slice_in_dim(feats[name], first // scale[name], (first + keep) // scale[name], axis=0)
           for name in layers}
    flat = {}  # accumulate in float32, as losses do
    for name in style_layers:
        f = own[name].reshape(-1, own[name].shape[-1])
        flat[name] = f.astype(jnp.promote_types(f.dtype, jnp.float32))
    sums = []
    for region in masks:
        sums.append({})
        for name, f in flat.items():
            m = jnp.ones((f.shape[0], 1), f.dtype) if region is None else jax.lax.dynamic_slice_in_dim(
                region[name], top_row // scale[name], own[name].shape[0], axis=0).reshape(-1, 1).astype(f.dtype)
            sums[-1][name] = _moments(f, m, kind)
    return {name: own[name] for name in content_layers}, tuple(sums)


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
