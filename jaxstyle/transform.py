"""The image transformation network of fast style transfer (Johnson, Alahi & Fei-Fei, ECCV 2016).

One forward pass paints a photo in the style the network was trained on
(`jaxstyle.feedforward`): the cost of Gatys et al.'s optimisation is paid once,
in training. The network, as Johnson et al. built it, with three later changes:

- instance normalisation instead of batch normalisation (Ulyanov, Vedaldi &
  Lempitsky 2016): each picture's contrast is normalised on its own, which is
  what makes the outputs of a feed-forward network look like the optimised ones;
- upsampling by nearest-neighbour resizing followed by a convolution instead of
  transposed convolutions (Odena, Dumoulin & Olah 2016), which leave a
  checkerboard pattern;
- reflection padding, so that the borders are painted like the rest.

Layers: a 9x9 convolution, two stride-2 3x3 convolutions down, five residual
blocks, two resize-convolutions up, a 9x9 convolution to RGB and a sigmoid
(RGB in [0, 1], as the rest of jaxstyle). ``width`` is the first layer's
channels (Johnson: 32; the ``johnson_half`` preset: 16, a quarter of the FLOPs,
for CPUs).

Several styles in one network (Dumoulin, Shlens & Kudlur 2017): with
``styles`` > 1, each instance normalisation has one scale and one bias per
style ("conditional instance normalisation"); the weights given at apply time
mix them, so styles blend in one pass.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxstyle.errors import UsageError

ARCHITECTURES: dict[str, dict[str, int]] = {
    "johnson": {"width": 32, "blocks": 5},
    "johnson_half": {"width": 16, "blocks": 5},
    "tiny": {"width": 4, "blocks": 1},  # for tests
}
MULTIPLE = 4  # two stride-2 layers: inputs are padded to a multiple of this and the output cropped back
EPS = 1e-5


def instance_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    r"""Instance normalisation of one feature map: :math:`\gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`.

    Args:
      x: (h, w, c) features; the mean and variance are over positions, per channel.
      scale, bias: (c,) :math:`\gamma` and :math:`\beta`.
    Returns:
      (h, w, c), the dtype of ``x``.
    """
    mean = jnp.mean(x, axis=(0, 1))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1))
    return (x - mean) * jax.lax.rsqrt(var + EPS) * scale + bias


class _Norm(nn.Module):
    """Conditional instance normalisation: one (scale, bias) per style, mixed by ``style`` weights."""

    styles: int

    @nn.compact
    def __call__(self, x: jax.Array, style: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (self.styles, c))
        bias = self.param("bias", nn.initializers.zeros, (self.styles, c))
        return instance_norm(x, style @ scale, style @ bias)


# XLA:CPU (jaxlib 0.10, 2 cores) runs a 3x3 convolution of 16 channels in and 16 out at 256 px at about
# 215 GFLOP/s, but one of 32 in and 16 out at 18 and one of 16 in and 32 out at 13: the wider layers of
# this network fall off a fast path that VGG's layers do not need. So on a CPU each convolution is
# computed over blocks of CPU_BLOCK input and output channels, a sum over the input blocks for each
# output block: the same products summed in another order. The network's forward pass at 256 px, 4
# pictures, went from 0.52 to 0.17 s, forward and backward from 1.23 to 0.71 s (BENCHMARKS.md, "Fast
# style"); other platforms get the plain convolution (`jax.lax.platform_dependent` picks when lowering).
CPU_BLOCK = 16


def _conv(lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
    """`jax.lax.conv_general_dilated` for ``nn.Conv`` (NHWC inputs, HWIO kernels), blocked on a CPU."""
    def plain(lhs, rhs):
        return jax.lax.conv_general_dilated(lhs, rhs, *args, **kwargs)

    def blocked(lhs, rhs):
        cin, cout = rhs.shape[-2:]
        return jnp.concatenate([sum(plain(lhs[..., i:i + CPU_BLOCK], rhs[:, :, i:i + CPU_BLOCK, o:o + CPU_BLOCK])
                                    for i in range(0, cin, CPU_BLOCK)) for o in range(0, cout, CPU_BLOCK)], -1)

    return jax.lax.platform_dependent(lhs, rhs, cpu=blocked, default=plain)


class _Conv(nn.Module):
    """Reflection padding and a convolution (with ``up``: nearest-neighbour 2x resize first)."""

    features: int
    kernel: int
    stride: int = 1
    up: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.up:
            x = jnp.repeat(jnp.repeat(x, 2, axis=0), 2, axis=1)
        p = self.kernel // 2
        x = jnp.pad(x, ((p, p), (p, p), (0, 0)), mode="reflect")
        return nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride, padding="VALID",
                       conv_general_dilated=_conv)(x)


class TransformNet(nn.Module):
    """Johnson et al.'s network for one picture, (h, w, 3) RGB in [0, 1] -> (h, w, 3) RGB in [0, 1].

    Attributes:
      width: channels of the first layer (the deepest have 4x as many).
      blocks: residual blocks.
      styles: styles it holds (conditional instance normalisation when > 1).
    """

    width: int = 32
    blocks: int = 5
    styles: int = 1

    @nn.compact
    def __call__(self, image: jax.Array, style: jax.Array | None = None) -> jax.Array:
        """Paint ``image``; ``style``: (styles,) mixing weights summing to 1 (default: the first style)."""
        style = jnp.eye(self.styles, dtype=jnp.float32)[0] if style is None else jnp.asarray(style, jnp.float32)
        h, w = image.shape[:2]
        ph, pw = -h % MULTIPLE, -w % MULTIPLE  # any size: pad to a multiple of 4, crop the output back
        x = jnp.pad(image.astype(jnp.float32), ((0, ph), (0, pw), (0, 0)), mode="reflect")

        def conv_norm_relu(x, features, kernel, stride=1, up=False):
            return nn.relu(_Norm(self.styles)(_Conv(features, kernel, stride, up)(x), style))

        x = conv_norm_relu(x, self.width, 9)
        x = conv_norm_relu(x, 2 * self.width, 3, stride=2)
        x = conv_norm_relu(x, 4 * self.width, 3, stride=2)
        for _ in range(self.blocks):
            y = conv_norm_relu(x, 4 * self.width, 3)
            x = x + _Norm(self.styles)(_Conv(4 * self.width, 3)(y), style)
        x = conv_norm_relu(x, 2 * self.width, 3, up=True)
        x = conv_norm_relu(x, self.width, 3, up=True)
        x = _Conv(3, 9)(x)
        return nn.sigmoid(x[:h, :w])


def model_for(architecture: str, styles: int = 1) -> TransformNet:
    """The network of a preset of `ARCHITECTURES` holding ``styles`` styles."""
    return TransformNet(**ARCHITECTURES[architecture], styles=styles)


def init_params(architecture: str, key: jax.Array, styles: int = 1) -> dict[str, Any]:
    """Fresh parameters (Flax's default initialisers; identity normalisation) as a plain pytree."""
    model = model_for(architecture, styles)
    return model.init(key, jnp.zeros((16, 16, 3), jnp.float32))["params"]


def param_shapes(architecture: str, styles: int = 1) -> dict[str, tuple[int, ...]]:
    """Flattened ``"a/b/c"`` name -> shape of every parameter, without computing any."""
    shapes = jax.eval_shape(lambda: init_params(architecture, jax.random.key(0), styles))
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {"/".join(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def expected_shapes(meta: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The parameter shapes a model file's metadata says it holds (`jaxstyle.model_file.load`'s check).

    Raises:
      UsageError: an architecture this jaxstyle does not know.
    """
    architecture = meta["architecture"]
    if architecture not in ARCHITECTURES:
        raise UsageError(f"the model holds a network of architecture {architecture!r}, which this jaxstyle does "
                         f"not know (it knows {', '.join(ARCHITECTURES)}); train it again with `jaxstyle train`")
    return param_shapes(architecture, len(meta["styles"]))


def apply(model: TransformNet, params: Mapping, images: jax.Array, style: jax.Array | None = None) -> jax.Array:
    """The network over a batch, (n, h, w, 3) -> (n, h, w, 3): `jax.vmap` of the one-picture module.

    ``style``: the styles' mixing weights, (styles,) for every picture or (n, styles) one row per picture;
    default: the first style.
    """
    if style is not None and jnp.ndim(style) == 2:
        return jax.vmap(lambda x, s: model.apply({"params": params}, x, s))(images, style)
    return jax.vmap(lambda x: model.apply({"params": params}, x, style))(images)
