"""Every setting of a style transfer run, defined once.

`StylizeConfig` is the single source of truth: the library reads it, and the
command line is derived from its fields (names, defaults, help text, choices),
so a default is never written twice.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxstyle.errors import UsageError


def _field(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field whose metadata carries the CLI help and options (``choices``)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYERS = ("relu4_2",)


@dataclasses.dataclass(frozen=True)
class StylizeConfig:
    """Settings of one style transfer run. All are keyword arguments of `stylize`."""

    size: int = _field(384, "longest side of the output, in pixels")
    steps: int = _field(300, "optimisation steps")
    optimizer: str = _field("adam", "optimiser of the pixels", choices=("adam", "lbfgs"))
    lr: float = _field(0.02, "Adam step size, in pixel units (image in [0, 1]); unused by L-BFGS")
    content_weight: float = _field(1.0, "weight of the content loss (alpha)")
    style_weight: float = _field(10.0, "weight of the style loss (beta)")
    tv_weight: float = _field(2.0, "weight of the total-variation smoothness loss (gamma)")
    content_layers: tuple[str, ...] = _field(CONTENT_LAYERS, "VGG layers whose activations the output keeps")
    style_layers: tuple[str, ...] = _field(STYLE_LAYERS, "VGG layers whose Gram matrices the output matches")
    content_layer_weights: tuple[float, ...] = _field(
        (), "one weight per content layer (default: equal weights; each layer is normalised first)")
    style_layer_weights: tuple[float, ...] = _field(
        (), "one weight per style layer (default: equal weights; each layer is normalised first)")
    init: str = _field("content", "start from 'content', 'noise' (seeded white noise) or an image path")
    seed: int = _field(0, "random seed (noise initialisation)")
    pooling: str = _field("max", "VGG pooling: max as trained, or avg", choices=("max", "avg"))
    avg_pool_scale: float = _field(
        2.0, "with --pooling avg: multiply pooled activations by this so they keep max pooling's magnitude")
    padding: str = _field("zeros", "padding of the first convolution: zeros as trained, or replicate "
                          "(edge pixels; fewer dark borders)", choices=("zeros", "replicate"))
    style_scale: float = _field(1.0, "size of the style image relative to the output (bigger: larger brush strokes)")
    style_blend: tuple[float, ...] = _field((), "one weight per style image (default: equal)")
    style_loss: str = _field("gram", "style statistics: Gram matrices (Gatys et al.) or mean and covariance "
                             "(2-Wasserstein distance)", choices=("gram", "mean_cov"))
    preserve_colors: str = _field("none", "keep the content's colours: transfer on luminance only, or match "
                                  "the style's colour histogram to the content first",
                                  choices=("none", "luminance", "histogram"))
    multiscale: bool = _field(False, "coarse-to-fine: optimise at small sizes first, then upsample")
    scales: tuple[int, ...] = _field((), "sizes of the coarse passes before --size (default with --multiscale: "
                                     "from 128 px growing by sqrt(2))")
    ema_decay: float = _field(0.0, "output the exponential moving average of the iterates with this decay "
                              "(0: off; e.g. 0.9)")
    dtype: str = _field("float32", "compute dtype of the network (bfloat16 for GPU/TPU; losses stay float32)",
                        choices=("float32", "bfloat16"))
    remat: bool = _field(False, "recompute VGG activations in the backward pass instead of keeping them (the "
                                "first blocks strip by strip): about half the memory at 1024 px, 1.5-1.8x the time")

    def __post_init__(self) -> None:
        check_config(self)

    def replace(self, **changes: Any) -> "StylizeConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def check_config(config: StylizeConfig) -> None:
    """Refuse out-of-range values before any compute.

    Raises:
      UsageError: naming the setting, its value and what is expected.
    """
    positive = {"size": config.size, "steps": config.steps, "style_scale": config.style_scale}
    for name, value in positive.items():
        if not value > 0 or not math.isfinite(value):
            raise UsageError(f"`{name}` must be positive, got {value}")
    if config.size < 16:
        raise UsageError(f"`size` must be at least 16 pixels for the VGG network, got {config.size}")
    for name in ("content_weight", "style_weight", "tv_weight", "lr"):
        if not 0 <= getattr(config, name) < math.inf:
            raise UsageError(f"`{name}` must be zero or positive and finite, got {getattr(config, name)}")
    for kind in ("content", "style"):
        layer_weights, layers = getattr(config, f"{kind}_layer_weights"), getattr(config, f"{kind}_layers")
        if any(not 0 <= w < math.inf for w in layer_weights) or (layer_weights and sum(layer_weights) <= 0):
            raise UsageError(f"`{kind}_layer_weights` must be zero or positive, not all zero, got {layer_weights}")
        if layer_weights and len(layer_weights) != len(layers):
            raise UsageError(f"`{kind}_layer_weights` has {len(layer_weights)} weights "
                             f"but there are {len(layers)} {kind} layers")
    if not config.content_layers and not config.style_layers:
        raise UsageError("give at least one content or style layer")
    if not 0 <= config.ema_decay < 1:
        raise UsageError(f"`ema_decay` must be in [0, 1), got {config.ema_decay}")
    if any(w < 0 for w in config.style_blend) or (config.style_blend and sum(config.style_blend) <= 0):
        raise UsageError(f"`style_blend` weights must be zero or positive and not all zero, got {config.style_blend}")
    if any(s < 16 or s > config.size for s in config.scales):
        raise UsageError(f"`scales` must be sizes from 16 to `size` ({config.size}), got {config.scales}")
    if not config.avg_pool_scale > 0:
        raise UsageError(f"`avg_pool_scale` must be positive, got {config.avg_pool_scale}")
    for name in ("optimizer", "pooling", "padding", "style_loss", "preserve_colors", "dtype"):
        choices = StylizeConfig.__dataclass_fields__[name].metadata["choices"]
        if getattr(config, name) not in choices:
            raise UsageError(f"`{name}` must be one of {', '.join(choices)}, got {getattr(config, name)!r}")
