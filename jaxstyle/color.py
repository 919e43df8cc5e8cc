"""Colour control: keep the content photo's colours while taking the painting's style.

Two methods from Gatys, Bethge, Hertzmann & Shechtman, "Controlling Perceptual
Factors in Neural Style Transfer", CVPR 2017:

- luminance-only transfer: style is transferred on the luminance channel (Y
  of YIQ) and the output keeps the content's chrominance (I, Q);
- colour histogram matching: before transfer, the style image's colours are
  given the mean and covariance of the content's, so the style carries no
  foreign colours into the output.

All functions are pure, on RGB in [0, 1], (h, w, 3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxstyle.losses import sqrtm_psd

# RGB -> YIQ (NTSC 1953), rows Y, I, Q.
# A NumPy constant: a jnp array here would start JAX's backend at import,
# before the command line can call `jax.distributed.initialize()`.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]], np.float32)


def rgb_to_yiq(image: jax.Array) -> jax.Array:
    """RGB (h, w, 3) -> YIQ (h, w, 3): Y is luminance, I and Q are chrominance."""
    return jnp.asarray(image) @ jnp.asarray(_RGB_TO_YIQ.T)


def yiq_to_rgb(image: jax.Array) -> jax.Array:
    """Inverse of `rgb_to_yiq`."""
    return jnp.asarray(image) @ jnp.asarray(np.linalg.inv(_RGB_TO_YIQ).T)


def luminance(image: jax.Array) -> jax.Array:
    """Y of YIQ, (h, w)."""
    return rgb_to_yiq(image)[..., 0]


def gray(y: jax.Array) -> jax.Array:
    """A luminance map (h, w) as a gray RGB image (h, w, 3)."""
    return jnp.repeat(y[..., None], 3, axis=-1)


def match_luminance(style_y: jax.Array, content_y: jax.Array) -> jax.Array:
    """Give the style's luminance the content's mean and standard deviation (Gatys et al. 2017, eq. 8)."""
    scale = jnp.std(content_y) / (jnp.std(style_y) + 1e-8)
    return jnp.clip((style_y - jnp.mean(style_y)) * scale + jnp.mean(content_y), 0.0, 1.0)


def combine_luminance(output: jax.Array, content: jax.Array) -> jax.Array:
    """The output's luminance with the content's chrominance (I, Q), as RGB in [0, 1]."""
    yiq = rgb_to_yiq(content).at[..., 0].set(luminance(output))
    return jnp.clip(yiq_to_rgb(yiq), 0.0, 1.0)


def prepare(preserve_colors: str, content: jax.Array, styles: list[jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
    """The content and style images as the optimisation sees them.

    Args:
      preserve_colors: "none", "luminance" (both become gray images of their
        luminance, the style's matched to the content's mean and spread) or
        "histogram" (the styles recoloured with `match_color_histogram`).
      content: RGB in [0, 1], (h, w, 3).
      styles: RGB in [0, 1], each (h_i, w_i, 3).
    Returns:
      ``(content, styles)``.
    """
    if preserve_colors == "luminance":
        y = luminance(content)
        return gray(y), [gray(match_luminance(luminance(s), y)) for s in styles]
    if preserve_colors == "histogram":
        return content, [match_color_histogram(s, content) for s in styles]
    return content, styles


def finish(preserve_colors: str, output: jax.Array, content: jax.Array) -> jax.Array:
    """The output as the user sees it: with "luminance", its luminance with the content's colours.

    Args:
      preserve_colors: as in `prepare`.
      output: the optimised image, RGB in [0, 1], (h, w, 3).
      content: the content image at the output's size.
    """
    return combine_luminance(output, content) if preserve_colors == "luminance" else output


def match_color_histogram(style: jax.Array, content: jax.Array) -> jax.Array:
    r"""Recolour ``style`` so its pixels have the mean and covariance of ``content``'s.

    .. math:: x' = \Sigma_c^{1/2} \Sigma_s^{-1/2} (x - \mu_s) + \mu_c

    (Gatys et al. 2017, the "Cholesky"/"image analogies" colour transform
    with symmetric square roots.)

    Args:
      style: RGB in [0, 1], (h, w, 3).
      content: RGB in [0, 1], (h', w', 3).
    Returns:
      The recoloured style, clipped to [0, 1], same shape as ``style``.
    """
    def stats(image):
        x = image.reshape(-1, 3)
        mean = x.mean(0)
        centred = x - mean
        return mean, centred.T @ centred / x.shape[0] + 1e-5 * jnp.eye(3)

    mean_s, cov_s = stats(style)
    mean_c, cov_c = stats(content)
    transform = sqrtm_psd(cov_c) @ jnp.linalg.inv(sqrtm_psd(cov_s))
    out = (style.reshape(-1, 3) - mean_s) @ transform.T + mean_c
    return jnp.clip(out.reshape(style.shape), 0.0, 1.0)
