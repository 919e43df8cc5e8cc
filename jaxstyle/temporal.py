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

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import struct
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


@struct.dataclass
class References:
    """What one frame of a video is held to: other stylized frames, warped onto its grid.

    Attributes:
      frames: (k, h, w, 3) the stylized frames, warped onto this frame (`warp`).
      masks: (k, h, w) in [0, 1]: where each can be trusted (`reliable`); all 0 for a missing one.
    """

    frames: jax.Array
    masks: jax.Array


def references_loss(image: jax.Array, references: References) -> jax.Array:
    """The sum of the `temporal_loss` of ``image`` (h, w, 3) to each of its references (a float32 scalar)."""
    return jnp.sum(jax.vmap(lambda frame, mask: temporal_loss(image, frame, mask))(references.frames,
                                                                                    references.masks))


def chain(backward: Sequence[jax.Array], masks: Sequence[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
    """The flows and masks from a frame back to each of the frames before it, composed from neighbours'.

    Args:
      backward: flow(i -> i - 1), flow(i - 1 -> i - 2), ..., nearest first, each
        (h, w, 2) on the grid of the later frame of its pair.
      masks: where each of those can be trusted (`reliable`), (h, w), nearest first.
    Returns:
      ``(flows, masks)``, nearest first: flow(i -> i - g) and its mask on frame
      i's grid, for g = 1, 2, ...: a pixel of frame i is carried back one
      frame at a time, and trusted only if every step of the way is.
    """
    flow, mask = backward[0], masks[0]
    flows, trusted = [flow], [mask]
    for earlier, earlier_mask in zip(backward[1:], masks[1:]):
        mask = mask * warp(earlier_mask, flow)  # the next step starts where this one ends
        flow = flow + warp(earlier, flow)
        flows.append(flow)
        trusted.append(mask)
    return flows, trusted


def long_term_masks(masks: jax.Array) -> jax.Array:
    r"""Ruder et al.'s long-term masks: each pixel held only to the nearest earlier frame that shows it.

    .. math:: c^{\mathrm{long}}_{j} = \max\big(c_{j} - \textstyle\sum_{k < j} c_{k},\ 0\big)

    Args:
      masks: (k, h, w) in [0, 1], nearest earlier frame first.
    Returns:
      (k, h, w): the first mask unchanged, each later one zero where a nearer frame is trusted.
    """
    nearer = jnp.cumsum(masks, axis=0) - masks
    return jnp.clip(masks - nearer, 0.0, 1.0)


def blend(image: jax.Array, warped: jax.Array, mask: jax.Array, amount: float) -> jax.Array:
    r"""A frame mixed with its warped neighbour where the flow is trusted (Ruder et al. 2018's multi-pass step):

    .. math:: x' = \delta \, c \odot \omega(x_{j \mp 1}) + (1 - \delta \, c) \odot x_j

    Args:
      image: the frame, (h, w, 3); warped: its neighbour warped onto it, (h, w, 3).
      mask: (h, w) in [0, 1] (`reliable`); amount: :math:`\delta` in [0, 1].
    """
    weight = amount * mask[..., None]
    return weight * warped + (1.0 - weight) * image
