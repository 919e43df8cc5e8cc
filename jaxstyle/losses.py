r"""The losses of neural style transfer (Gatys, Ecker & Bethge), as pure functions.

Every function here takes one image's arrays, ``(h, w, c)``, and returns a
scalar or a small matrix. They are pure, so `jax.jit`, `jax.grad` and
`jax.vmap` apply to them directly; a batch of images is ``jax.vmap(fn)``.

Notation, for one VGG layer :math:`l`: :math:`F^l \in \mathbb{R}^{M_l \times N_l}`
are the activations of the image being optimised, flattened over the
:math:`M_l = h_l w_l` positions, with :math:`N_l` channels; :math:`P^l` are
the content image's and :math:`A^l` the style image's Gram matrices.

The style transfer objective (Gatys et al. 2016, eq. 7, with a total
variation term as in Johnson et al. 2016) is

.. math::
   L(x) = \alpha \sum_l a_l L_\mathrm{content}^l
        + \beta \sum_l b_l L_\mathrm{style}^l + \gamma \, \mathrm{TV}(x)

and the image :math:`x` is found by gradient descent on its pixels.

Departures from the paper, each on purpose and said again where it happens:
  - Gram matrices are divided by the number of positions :math:`M_l`, and
    the losses are means rather than sums, so that their size does not grow
    with the image size.
  - `normalizers` weights each layer by the inverse mean square of its target,
    so each layer starts near 1 whatever its magnitude, and the default
    content and style weights work across image sizes and networks.

References:
  Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural
  Networks", CVPR 2016 (arXiv:1508.06576 for the 2015 version).
  Johnson, Alahi & Fei-Fei, "Perceptual Losses for Real-Time Style Transfer
  and Super-Resolution", ECCV 2016 (total variation regulariser).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from jaxstyle.config import STYLE_LOSSES
from jaxstyle.temporal import References, references_loss


def gram_matrix(features: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    r"""Channel correlations of one feature map, averaged over positions.

    .. math:: G_{ij} = \frac{1}{M} \sum_{k=1}^{M} F_{ki} F_{kj},
              \quad\text{i.e.}\quad G = F^\top F / M

    The paper's Gram matrix is the unnormalised sum :math:`F^\top F`; dividing
    by the number of positions :math:`M = h w` makes it independent of image
    size (a style image at 256 or 1024 px gives the same statistics). Some
    implementations divide by :math:`C h w` instead, which only rescales the
    style weight by :math:`1/C^2` per layer.

    With a mask :math:`m` (a guided Gram matrix, Gatys et al. 2017), positions
    are weighted: :math:`G = F^\top \operatorname{diag}(m) F / \sum_k m_k`.

    Args:
      features: activations of one image, (h, w, c), any float dtype.
      mask: optional weights in [0, 1] per position, (h, w).
    Returns:
      (c, c) float32 symmetric positive semi-definite matrix.
    """
    h, w, c = features.shape
    f = _at_least_f32(features.reshape(h * w, c))  # accumulate in float32 even for bf16 nets
    if mask is None:
        return jnp.matmul(f.T, f, precision=jax.lax.Precision.HIGHEST) / (h * w)
    m = _at_least_f32(mask.reshape(h * w, 1))
    return jnp.matmul(f.T, f * m, precision=jax.lax.Precision.HIGHEST) / (jnp.sum(m) + 1e-8)


def mean_covariance(features: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    r"""Mean and covariance of the channels over positions (optionally weighted by ``mask``).

    .. math:: \mu = \frac{1}{M} \sum_k F_k, \qquad
              \Sigma = \frac{1}{M} \sum_k (F_k - \mu)(F_k - \mu)^\top = G - \mu\mu^\top

    Args:
      features: activations of one image, (h, w, c).
      mask: optional weights in [0, 1] per position, (h, w).
    Returns:
      ``(mean (c,), covariance (c, c))``, float32.
    """
    h, w, c = features.shape
    f = _at_least_f32(features.reshape(h * w, c))
    m = jnp.ones((h * w, 1), f.dtype) if mask is None else _at_least_f32(mask.reshape(h * w, 1))
    total = jnp.sum(m) + 1e-8
    mean = jnp.sum(f * m, axis=0) / total
    centred = f - mean
    cov = jnp.matmul(centred.T, centred * m, precision=jax.lax.Precision.HIGHEST) / total
    return mean, cov


def content_loss(features: jax.Array, target: jax.Array) -> jax.Array:
    r"""Mean squared difference of activations (Gatys et al. eq. 1).

    .. math:: L_\mathrm{content} = \frac{1}{M N} \sum_{k,i} (F_{ki} - P_{ki})^2

    The paper uses :math:`\frac12 \sum`; a mean makes it size-independent.

    Args:
      features: activations of the image being optimised, (h, w, c).
      target: the content image's activations at the same layer, (h, w, c).
    Returns:
      float32 scalar.
    """
    diff = _at_least_f32(features) - _at_least_f32(target)
    return jnp.mean(diff * diff)


def gram_distance(gram: jax.Array, target: jax.Array) -> jax.Array:
    r"""Mean squared difference of two Gram matrices (Gatys et al. eq. 4).

    .. math:: E = \frac{1}{N^2} \sum_{i,j} (G_{ij} - A_{ij})^2

    With Gram matrices divided by :math:`M` (see `gram_matrix`), this is
    exactly 4 times the paper's :math:`E_l = \frac{1}{4 N^2 M^2}\sum (G-A)^2`
    computed with unnormalised Gram matrices.

    Args:
      gram: (c, c) Gram matrix of the image being optimised.
      target: (c, c) Gram matrix of the style.
    Returns:
      float32 scalar.
    """
    diff = gram - target
    return jnp.mean(diff * diff)


@jax.custom_jvp
def sqrtm_psd(matrix: jax.Array) -> jax.Array:
    r"""Square root of a symmetric positive semi-definite matrix, with a stable derivative.

    :math:`S = V \operatorname{diag}(\sqrt{\lambda}) V^\top` from the eigendecomposition
    :math:`A = V \operatorname{diag}(\lambda) V^\top` (eigenvalues clipped at 0).
    Its derivative is the Daleckii-Krein formula
    :math:`dS = V [(V^\top dA V) / (\sqrt{\lambda_i} + \sqrt{\lambda_j})] V^\top`,
    whose denominators vanish only where both eigenvalues do (a tiny floor
    keeps them finite), unlike differentiating through `eigh`'s eigenvectors,
    which divides by :math:`\lambda_i - \lambda_j` and breaks on repeated
    eigenvalues.

    Args:
      matrix: (n, n) symmetric PSD, float32 or float64.
    Returns:
      (n, n) symmetric PSD square root.
    """
    vals, vecs = jnp.linalg.eigh(matrix)
    return (vecs * jnp.sqrt(jnp.clip(vals, 0.0))) @ vecs.T


@sqrtm_psd.defjvp
def _sqrtm_psd_jvp(primals, tangents):
    (matrix,), (dmatrix,) = primals, tangents
    vals, vecs = jnp.linalg.eigh(matrix)
    roots = jnp.sqrt(jnp.clip(vals, 0.0))
    floor = 1e-6 * (jnp.max(roots) + 1e-12)
    rotated = vecs.T @ dmatrix @ vecs
    droot = vecs @ (rotated / (roots[:, None] + roots[None, :] + floor)) @ vecs.T
    return (vecs * roots) @ vecs.T, droot


def wasserstein2_distance(stats: tuple[jax.Array, jax.Array],
                          target: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
    r"""Squared 2-Wasserstein distance between two Gaussians (a style distance).

    .. math:: W_2^2 = \lVert \mu - \mu_s \rVert^2 + \operatorname{tr}\Sigma
              + \operatorname{tr}\Sigma_s
              - 2 \operatorname{tr}\big(\Sigma_s^{1/2} \Sigma \Sigma_s^{1/2}\big)^{1/2}

    Compared with the Gram distance it matches the mean and covariance of the
    features separately, as crowsonkb/style-transfer-pytorch does, and grows
    like a squared distance of features rather than a fourth power. Divided
    by the number of channels here, to keep the scale per layer comparable.

    Args:
      stats: ``(mean (c,), covariance (c, c))`` of the image being optimised.
      target: ``(mean, covariance, sqrt of covariance)`` of the style.
    Returns:
      float32 scalar.
    """
    mean, cov = stats
    t_mean, t_cov, t_cov_sqrt = target
    cross = sqrtm_psd(t_cov_sqrt @ cov @ t_cov_sqrt)
    w2 = jnp.sum((mean - t_mean) ** 2) + jnp.trace(cov) + jnp.trace(t_cov) - 2 * jnp.trace(cross)
    return w2 / mean.shape[0]


def style_statistics(features: jax.Array, kind: str, mask: jax.Array | None = None):
    """The style statistics of one layer: a Gram matrix, or ``(mean, covariance)``."""
    if kind == "gram":
        return gram_matrix(features, mask)
    if kind == "mean_cov":
        return mean_covariance(features, mask)
    raise ValueError(f"unknown style loss {kind!r}; expected one of {STYLE_LOSSES}")


def style_target(stats, kind: str):
    """Turn style statistics into a loss target (adds the covariance's square root for mean_cov)."""
    if kind == "mean_cov":
        mean, cov = stats
        return mean, cov, sqrtm_psd(cov)
    return stats


def statistics_distance(stats, target, kind: str) -> jax.Array:
    """Distance between one layer's style statistics and a style target (`gram_distance` or W2)."""
    if kind == "gram":
        return gram_distance(stats, target)
    return wasserstein2_distance(stats, target)


def style_distance(features: jax.Array, target, kind: str, mask: jax.Array | None = None) -> jax.Array:
    """Distance between one layer's features and a style target (`gram_distance` or W2)."""
    return statistics_distance(style_statistics(features, kind, mask), target, kind)


def style_loss(features: Mapping[str, jax.Array], targets: Mapping[str, Any],
               layer_weights: Mapping[str, jax.Array], *, kind: str = "gram",
               masks: Mapping[str, jax.Array] | None = None) -> jax.Array:
    r"""Weighted sum of style distances over layers (Gatys et al. eq. 5).

    .. math:: L_\mathrm{style} = \sum_l w_l \, E_l, \qquad
              E_l = \frac{1}{N_l^2} \sum_{i,j} (G^l_{ij} - A^l_{ij})^2 \text{ for ``kind="gram"``}

    Args:
      features: layer name -> activations (h, w, c) of the image being optimised.
      targets: layer name -> style target: a (c, c) Gram matrix, or for
        ``kind="mean_cov"`` the triple of `style_target`.
      layer_weights: layer name -> scalar weight :math:`w_l`, same keys as ``targets``.
      kind: "gram" (Gatys et al.) or "mean_cov" (`wasserstein2_distance`).
      masks: optional layer name -> (h, w) weights: the statistics of the image
        are taken over that region only (guided style transfer).
    Returns:
      float32 scalar.
    """
    return sum(layer_weights[name] * style_distance(features[name], target, kind,
                                                     None if masks is None else masks[name])
               for name, target in targets.items())


def total_variation(image: jax.Array) -> jax.Array:
    r"""Mean squared difference between neighbouring pixels.

    .. math:: \mathrm{TV}(x) = \operatorname{mean}_{i,j,c} (x_{i+1,j,c} - x_{i,j,c})^2
                             + \operatorname{mean}_{i,j,c} (x_{i,j+1,c} - x_{i,j,c})^2

    The squared (smooth) form keeps the objective differentiable everywhere,
    which L-BFGS's line search relies on; it discourages pixel noise.

    Args:
      image: (h, w, c), h and w at least 2.
    Returns:
      float32 scalar.
    """
    image = _at_least_f32(image)
    dy = image[1:, :, :] - image[:-1, :, :]
    dx = image[:, 1:, :] - image[:, :-1, :]
    return jnp.mean(dy * dy) + jnp.mean(dx * dx)


def normalizers(targets: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    r"""Per-layer scale :math:`1 / \operatorname{mean}(T^2)` of each content target.

    Departure from the paper: multiplying each layer's loss by this makes an
    all-zero image score exactly 1, so layers with large activations do not
    drown the others, and weights mean the same for any network or image size.

    Args:
      targets: layer name -> target activations.
    Returns:
      layer name -> float32 scalar.
    """
    return {name: 1.0 / (jnp.mean(jnp.square(_at_least_f32(t))) + 1e-8) for name, t in targets.items()}


def style_normalizers(targets: Mapping[str, Any], kind: str) -> dict[str, jax.Array]:
    r"""Per-layer scale of the style loss: one over the distance of all-zero features to the target.

    For Gram matrices this is :math:`1 / \operatorname{mean}(A^2)`, as in
    `normalizers`; for ``mean_cov`` it is :math:`N / (\lVert\mu\rVert^2 + \operatorname{tr}\Sigma)`.
    """
    if kind == "gram":
        return normalizers(targets)
    return {name: t[0].shape[0] / (jnp.sum(t[0] ** 2) + jnp.trace(t[1]) + 1e-8) for name, t in targets.items()}


def _at_least_f32(x: jax.Array) -> jax.Array:
    """Promote bfloat16/float16 to float32 (float64 stays float64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


@struct.dataclass
class Targets:
    """What the output should match, computed once from the content and style images.

    Attributes:
      content: layer name -> content image activations, (h, w, c).
      style: one dict per style region, layer name -> style target (see
        `style_target`). Without masks there is one region: the whole image,
        with the style images' statistics blended.
      masks: one entry per region: layer name -> (h_l, w_l) weights of the
        output's positions that take that region's style, or None for everywhere.
      kind: the style loss, "gram" or "mean_cov" (static: part of the program).
      temporal: for a frame of a video, the earlier stylized frames warped onto
        it and where each can be trusted (`jaxstyle.temporal.References`); None otherwise.
    """

    content: dict[str, jax.Array]
    style: tuple[dict[str, Any], ...]
    masks: tuple[dict[str, jax.Array] | None, ...]
    kind: str = struct.field(pytree_node=False, default="gram")
    temporal: References | None = None


@struct.dataclass
class Weights:
    r"""The loss weights, as arrays: traced by `jax.jit`, so changing them does not recompile.

    Attributes:
      content: :math:`\alpha`, scalar.
      style: :math:`\beta`, scalar.
      tv: :math:`\gamma`, scalar.
      content_layers: layer name -> :math:`a_l` (already multiplied by its normaliser).
      style_layers: per style region, layer name -> :math:`b_l` (times the
        region's weight and its normaliser).
      temporal: the weight of the temporal term of a video frame, scalar (None: no such term).
    """

    content: jax.Array
    style: jax.Array
    tv: jax.Array
    content_layers: dict[str, jax.Array]
    style_layers: tuple[dict[str, jax.Array], ...]
    temporal: jax.Array | None = None


def region_statistics(features: Mapping[str, jax.Array], layers: Sequence[str], kind: str,
                      masks: Sequence[Mapping[str, jax.Array] | None]) -> tuple[dict[str, Any], ...]:
    """The style statistics of the image being optimised, per style region and layer.

    Args:
      features: layer name -> activations (h, w, c), for every one of ``layers``.
      layers: the style layers.
      kind: "gram" or "mean_cov" (`style_statistics`).
      masks: one entry per region: None (every position) or layer name -> (h, w) weights.
    Returns:
      One dict per region: layer name -> `style_statistics`.
    """
    return tuple({name: style_statistics(features[name], kind, None if m is None else m[name]) for name in layers}
                 for m in masks)


def loss_terms(image: jax.Array, features: Mapping[str, jax.Array], targets: Targets,
               weights: Weights) -> dict[str, jax.Array]:
    r"""The three weighted terms of the objective, for one image.

    Args:
      image: the image being optimised, RGB in [0, 1], (h, w, 3).
      features: its VGG activations for every content and style layer.
      targets: the content activations and style targets.
      weights: the loss weights.
    Returns:
      ``{"content": \alpha \sum_l a_l L^l_c, "style": \beta \sum_l b_l L^l_s,
      "tv": \gamma TV(x)}``, float32 scalars; for a video frame also
      ``"temporal"`` (`jaxstyle.temporal.references_loss` times its weight).
    """
    layers = tuple(dict.fromkeys(name for region in targets.style for name in region))
    return loss_terms_of_statistics(image, features, region_statistics(features, layers, targets.kind, targets.masks),
                                    targets, weights)


def loss_terms_of_statistics(image: jax.Array, content_features: Mapping[str, jax.Array],
                             style_stats: tuple[Mapping[str, Any], ...], targets: Targets,
                             weights: Weights) -> dict[str, jax.Array]:
    r"""`loss_terms` from what the objective needs of the network: content activations and style statistics.

    The objective depends on the image only through these (and through the
    pixels, for TV). Style statistics are sums over positions, so they can be
    computed elsewhere piece by piece (`jaxstyle.strips`) and passed in.

    Args:
      image: the image being optimised, RGB in [0, 1], (h, w, 3).
      content_features: layer name -> activations (h, w, c), for every content layer.
      style_stats: per region, layer name -> statistics, as `region_statistics` gives them.
      targets, weights: as in `loss_terms`.
    Returns:
      The same dict as `loss_terms`.
    """
    content = sum(weights.content_layers[name] * content_loss(content_features[name], target)
                  for name, target in targets.content.items())
    style = sum(style_layer_distances(style_stats, targets, weights).values())
    terms = {
        "content": weights.content * content,
        "style": weights.style * style,
        "tv": weights.tv * total_variation(image),
    }
    if targets.temporal is not None:  # a video frame (Ruder et al.), see `jaxstyle.temporal`
        terms["temporal"] = weights.temporal * references_loss(image, targets.temporal)
    return terms


def style_layer_distances(style_stats: tuple[Mapping[str, Any], ...], targets: Targets,
                          weights: Weights) -> dict[str, jax.Array]:
    r"""Each style layer's share of the style loss, before :math:`\beta`: :math:`b_l L^l_s`, summed over regions.

    The "style" term of `loss_terms` is :math:`\beta` times the sum of these; progress reports show
    them one by one (a layer whose share stays high is one the picture has not matched yet).

    Args:
      style_stats: per region, layer name -> statistics, as `region_statistics` gives them.
      targets, weights: as in `loss_terms`.
    Returns:
      Layer name -> float32 scalar, in the order of the style layers.
    """
    shares: dict[str, jax.Array] = {}
    for region, stats, layer_weights in zip(targets.style, style_stats, weights.style_layers):
        for name, target in region.items():
            share = layer_weights[name] * statistics_distance(stats[name], target, targets.kind)
            shares[name] = share if name not in shares else shares[name] + share
    return shares


def total_loss(image: jax.Array, features: Mapping[str, jax.Array], targets: Targets,
               weights: Weights) -> jax.Array:
    """The objective :math:`L(x)`: the sum of `loss_terms`. Float32 scalar."""
    return sum(loss_terms(image, features, targets, weights).values())
