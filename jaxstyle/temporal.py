"""Temporal consistency for video: warping by optical flow, where the flow can be trusted, and the loss.

Stylizing the frames of a clip one by one flickers: each frame lands in a
different local optimum. Ruder, Dosovitskiy & Brox ("Artistic style transfer
for videos", GCPR 2016) tie each frame to the previous stylized frame, carried
along the optical flow, wherever the flow is reliable:

- `warp` moves an image along a flow field (bilinear sampling);
- `reliable` is their mask: 0 where the forward and backward flows disagree
  (the pixel was hidden in the other frame), at motion boundaries and where
  the flow leaves the frame, 1 elsewhere;
- `temporal_loss` is the mean squared difference to the warped frame over the
  reliable pixels, the term a frame's objective gains.

A flow is an array (h, w, 2) of (dx, dy) in pixels, defined on the grid of
the frame it is used for: ``flow = flow(a -> b)`` says that the content at
(y, x) in frame a is at (y + dy, x + dx) in frame b (OpenCV's convention for
``calc(a, b)``). So ``warp(b, flow(a -> b))`` looks like frame a. Everything
here is a pure function of arrays, written for one frame: `jax.vmap` maps it
over the frames of a clip.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

# The thresholds of Ruder et al. (2016), section 3.2: the flows are inconsistent where the
# round trip misses by more than 1 % of their squared lengths plus half a pixel squared, and a
# motion boundary is where the flow's gradient exceeds 1 % of its squared length plus 0.002.
ROUND_TRIP = (0.01, 0.5)
BOUNDARY = (0.01, 0.002)


def warp(image: jax.Array, flow: jax.Array) -> jax.Array:
    """``image`` sampled along ``flow``: ``out[y, x] = image[y + dy, x + dx]``, bilinear, edges repeated.

    Args:
      image: (h, w) or (h, w, c).
      flow: (h, w, 2), (dx, dy) from the grid of the result into ``image``.
    Returns:
      An array of ``image``'s shape and dtype.
    """
    coordinates = _sources(flow)

    def sample(channel):
        return map_coordinates(channel, coordinates, order=1, mode="nearest")

    if image.ndim == 2:
        return sample(image)
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)


def _sources(flow: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(y + dy, x + dx) at every pixel (y, x): where ``flow`` says each pixel's content comes from."""
    h, w = flow.shape[:2]
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=flow.dtype), jnp.arange(w, dtype=flow.dtype), indexing="ij")
    return rows + flow[..., 1], cols + flow[..., 0]


def reliable(forward: jax.Array, backward: jax.Array) -> jax.Array:
    """Where frame b's flow back to frame a can be trusted (Ruder et al. 2016): a (h, w) mask of 0 and 1.

    Args:
      forward: flow(a -> b), on frame a's grid.
      backward: flow(b -> a), on frame b's grid.
    Returns:
      On frame b's grid: 0 where the round trip b -> a -> b misses (the pixel was
      hidden in frame a: a disocclusion), at motion boundaries, and where the
      backward flow leaves the frame; 1 elsewhere.
    """
    there = warp(forward, backward)  # the forward flow of the point that each pixel of b comes from
    misses = jnp.sum((there + backward) ** 2, -1)
    lengths = jnp.sum(there ** 2, -1) + jnp.sum(backward ** 2, -1)
    occluded = misses > ROUND_TRIP[0] * lengths + ROUND_TRIP[1]
    dy, dx = jnp.gradient(backward, axis=(0, 1))  # central differences, one-sided at the edges
    boundary = jnp.sum(dx ** 2 + dy ** 2, -1) > BOUNDARY[0] * jnp.sum(backward ** 2, -1) + BOUNDARY[1]
    h, w = backward.shape[:2]
    y, x = _sources(backward)
    outside = (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)
    return (~(occluded | boundary | outside)).astype(backward.dtype)


def temporal_loss(image: jax.Array, warped: jax.Array, mask: jax.Array) -> jax.Array:
    r"""Ruder et al.'s temporal loss: the squared difference to the warped previous frame where it is
    reliable, over all the values of the image,

    .. math:: \frac{1}{hwc} \sum_{y, x, k} m_{yx} \, (x_{yxk} - \omega_{yxk})^2 .

    Args:
      image: the frame being optimised, (h, w, c).
      warped: the previous stylized frame warped to this one, (h, w, c).
      mask: (h, w) weights in [0, 1], e.g. `reliable`.
    """
    return jnp.mean(mask[..., None] * (image - warped) ** 2)
