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

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import struct


def gram_matrix(features: jax.Array) -> jax.Array:
    r"""Channel correlations of one feature map, averaged over positions.

    .. math:: G_{ij} = \frac{1}{M} \sum_{k=1}^{M} F_{ki} F_{kj},
              \quad\text{i.e.}\quad G = F^\top F / M

    The paper's Gram matrix is the unnormalised sum :math:`F^\top F`; dividing
    by the number of positions :math:`M = h w` makes it independent of image
    size (a style image at 256 or 1024 px gives the same statistics). Some
    implementations divide by :math:`C h w` instead, which only rescales the
    style weight by :math:`1/C^2` per layer.

    Args:
      features: activations of one image, (h, w, c), any float dtype.
    Returns:
      (c, c) float32 symmetric positive semi-definite matrix.
    """
    h, w, c = features.shape
    f = _at_least_f32(features.reshape(h * w, c))  # accumulate in float32 even for bf16 nets
    return jnp.matmul(f.T, f, precision=jax.lax.Precision.HIGHEST) / (h * w)


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


def style_loss(features: Mapping[str, jax.Array], target_grams: Mapping[str, jax.Array],
               layer_weights: Mapping[str, jax.Array]) -> jax.Array:
    r"""Weighted sum of Gram distances over layers (Gatys et al. eq. 5).

    .. math:: L_\mathrm{style} = \sum_l w_l \, E_l(G(F^l), A^l)

    Args:
      features: layer name -> activations (h, w, c) of the image being optimised.
      target_grams: layer name -> (c, c) style Gram matrix, for every style layer.
      layer_weights: layer name -> scalar weight :math:`w_l`, same keys as
        ``target_grams``.
    Returns:
      float32 scalar.
    """
    return sum(layer_weights[name] * gram_distance(gram_matrix(features[name]), target)
               for name, target in target_grams.items())


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
    r"""Per-layer scale :math:`1 / \operatorname{mean}(T^2)` of each target.

    Departure from the paper: multiplying each layer's loss by this makes a
    layer whose target is reproduced by an all-zero image score exactly 1, so
    layers with large activations (deep ones, for Gram matrices) do not drown
    the others, and weights mean the same for any network or image size.

    Args:
      targets: layer name -> target array (activations or Gram matrix).
    Returns:
      layer name -> float32 scalar.
    """
    return {name: 1.0 / (jnp.mean(jnp.square(_at_least_f32(t))) + 1e-8)
            for name, t in targets.items()}


def _at_least_f32(x: jax.Array) -> jax.Array:
    """Promote bfloat16/float16 to float32 (float64 stays float64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


@struct.dataclass
class Targets:
    """What the output should match, computed once from the content and style images.

    Attributes:
      content: layer name -> content image activations, (h, w, c).
      style: layer name -> style Gram matrix, (c, c).
    """

    content: dict[str, jax.Array]
    style: dict[str, jax.Array]


@struct.dataclass
class Weights:
    r"""The loss weights, as arrays: traced by `jax.jit`, so changing them does not recompile.

    Attributes:
      content: :math:`\alpha`, scalar.
      style: :math:`\beta`, scalar.
      tv: :math:`\gamma`, scalar.
      content_layers: layer name -> :math:`a_l` (already multiplied by its normaliser).
      style_layers: layer name -> :math:`b_l` (already multiplied by its normaliser).
    """

    content: jax.Array
    style: jax.Array
    tv: jax.Array
    content_layers: dict[str, jax.Array]
    style_layers: dict[str, jax.Array]


def loss_terms(image: jax.Array, features: Mapping[str, jax.Array], targets: Targets,
               weights: Weights) -> dict[str, jax.Array]:
    r"""The three weighted terms of the objective, for one image.

    Args:
      image: the image being optimised, RGB in [0, 1], (h, w, 3).
      features: its VGG activations for every content and style layer.
      targets: the content activations and style Gram matrices.
      weights: the loss weights.
    Returns:
      ``{"content": \alpha \sum_l a_l L^l_c, "style": \beta \sum_l b_l L^l_s,
      "tv": \gamma TV(x)}``, float32 scalars.
    """
    content = sum(weights.content_layers[name] * content_loss(features[name], target)
                  for name, target in targets.content.items())
    return {
        "content": weights.content * content,
        "style": weights.style * style_loss(features, targets.style, weights.style_layers),
        "tv": weights.tv * total_variation(image),
    }


def total_loss(image: jax.Array, features: Mapping[str, jax.Array], targets: Targets,
               weights: Weights) -> jax.Array:
    """The objective :math:`L(x)`: the sum of `loss_terms`. Float32 scalar."""
    return sum(loss_terms(image, features, targets, weights).values())
