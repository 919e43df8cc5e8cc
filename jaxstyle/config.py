"""Every setting of a style transfer run, and every option of how a command runs it, defined once.

`StylizeConfig` holds what shapes the picture; `RunOptions` how a command runs
and what it keeps (weights file, checkpoints, snapshots, log, overwriting).
Each is the single source of truth: the library reads them, and the command
line is derived from their fields (names, defaults, help text, choices), so a
default is never written twice. Errors name the fields (`` `lr` ``); the
command line words them as its flags (``--lr``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from jaxstyle.errors import UsageError


def _field(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field whose metadata carries the CLI help and options (``choices``)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYERS = ("relu4_2",)
# The allowed values of the settings that take a name, written once here (the
# network, the losses and the colour code check against these).
OPTIMIZERS = ("adam", "lbfgs")
POOLING = ("max", "avg")
PADDING = ("zeros", "replicate")
STYLE_LOSSES = ("gram", "mean_cov")
PRESERVE_COLORS = ("none", "luminance", "histogram")
DTYPES = ("float32", "bfloat16")
PNG_BITS = (8, 16)
MIN_STRIP_PIXELS = 2**12  # smaller strips mostly recompute their halo


@dataclasses.dataclass(frozen=True)
class StylizeConfig:
    """Settings of one style transfer run. All are keyword arguments of `stylize`."""

    size: int = _field(384, "longest side of the output, in pixels")
    steps: int = _field(300, "optimisation steps (coarse to fine: at the first scale, fewer at each larger one)")
    optimizer: str = _field("adam", "optimiser of the pixels", choices=OPTIMIZERS)
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
    pooling: str = _field("max", "VGG pooling: max as trained, or avg", choices=POOLING)
    avg_pool_scale: float = _field(
        2.0, "with --pooling avg: multiply pooled activations by this so they keep max pooling's magnitude")
    padding: str = _field("zeros", "padding of the first convolution: zeros as trained, or replicate "
                          "(edge pixels; fewer dark borders)", choices=PADDING)
    style_scale: float = _field(1.0, "size of the style image relative to the output (bigger: larger brush strokes)")
    style_blend: tuple[float, ...] = _field((), "one weight per style image (default: equal)")
    style_loss: str = _field("gram", "style statistics: Gram matrices (Gatys et al.) or mean and covariance "
                             "(2-Wasserstein distance)", choices=STYLE_LOSSES)
    preserve_colors: str = _field("none", "keep the content's colours: transfer on luminance only, or match "
                                  "the style's colour histogram to the content first",
                                  choices=PRESERVE_COLORS)
    multiscale: bool = _field(False, "coarse-to-fine at any size, from 128 px growing by sqrt(2) (outputs over "
                              "1024 px always go coarse to fine, from 512 px doubling)")
    scales: tuple[int, ...] = _field((), "sizes of the coarse passes before --size")
    scale_steps: tuple[int, ...] = _field((), "steps at each scale, coarsest first, e.g. 300,75,19 (one number: a "
                                          "single scale at --size; default: --steps at the first scale, then fewer "
                                          "so that each scale costs about as much)")
    ema_decay: float = _field(0.0, "output the exponential moving average of the iterates with this decay "
                              "(0: off; e.g. 0.9)")
    dtype: str = _field("float32", "compute dtype of the network (bfloat16 for GPU/TPU; losses stay float32)",
                        choices=DTYPES)
    remat: bool = _field(False, "recompute VGG activations in the backward pass instead of keeping them (the "
                                "first blocks strip by strip): about half the memory at 1024 px, 1.5-1.8x the time; "
                                "without it a run does this only when it would not fit in memory otherwise")
    strip_pixels: int = _field(0, "image pixels per strip when a run goes strip by strip (0: the largest strips "
                               "that fit in memory)", metavar="N")
    remat_above: int = _field(0, "with --remat, only the scales larger than this (longest side, px) go strip by "
                              "strip (0: every scale); a run that plans strips itself sets it to its largest "
                              "scale that fits whole", metavar="PX")

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
    _check_finite(config)
    positive = {"size": config.size, "steps": config.steps, "style_scale": config.style_scale,
                "avg_pool_scale": config.avg_pool_scale}
    for name, value in positive.items():
        if not value > 0:
            raise UsageError(f"`{name}` must be positive, got {value}")
    if config.size < 16:
        raise UsageError(f"`size` must be at least 16 pixels for the VGG network, got {config.size}")
    for name in ("content_weight", "style_weight", "tv_weight", "lr"):
        if not getattr(config, name) >= 0:
            raise UsageError(f"`{name}` must be zero or positive, got {getattr(config, name)}")
    for kind in ("content", "style"):
        layer_weights, layers = getattr(config, f"{kind}_layer_weights"), getattr(config, f"{kind}_layers")
        if any(w < 0 for w in layer_weights) or (layer_weights and sum(layer_weights) <= 0):
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
    if config.strip_pixels and config.strip_pixels < MIN_STRIP_PIXELS:
        raise UsageError(f"`strip_pixels` must be 0 (chosen from the memory) or at least {MIN_STRIP_PIXELS}, "
                         f"got {config.strip_pixels}")
    if config.remat_above < 0:
        raise UsageError(f"`remat_above` must be zero or positive, got {config.remat_above}")
    if any(s < 16 or s > config.size for s in config.scales):
        raise UsageError(f"`scales` must be sizes from 16 to `size` ({config.size}), got {config.scales}")
    if any(n < 1 for n in config.scale_steps):
        raise UsageError(f"`scale_steps` must be positive, got {','.join(map(str, config.scale_steps))}")
    _check_choices(config)


def _check_finite(options: Any) -> None:
    """Refuse NaN and infinite numbers in any field of a settings dataclass (the command line parses "nan")."""
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            shown = ",".join(map(str, values)) if isinstance(value, tuple) else str(value)
            raise UsageError(f"`{f.name}` must be a finite number, got {shown}")


def _check_choices(options: Any) -> None:
    """Refuse a value outside a field's ``choices`` (the command line checks them too, the library here)."""
    for f in dataclasses.fields(options):
        choices = f.metadata.get("choices")
        if choices and getattr(options, f.name) not in choices:
            raise UsageError(f"`{f.name}` must be one of {', '.join(map(str, choices))}, got {getattr(options, f.name)!r}")


VIDEO_MODES = ("sequential", "multipass", "independent")
FLOW_PRESETS = ("ultrafast", "fast", "medium", "fine")  # OpenCV DIS's, and a finer one (`jaxstyle.flow`)


@dataclasses.dataclass(frozen=True)
class VideoConfig:
    """How ``jaxstyle video`` ties the frames of a clip together (`jaxstyle.video`), beside the settings of
    each frame (`StylizeConfig`)."""

    mode: str = _field("sequential", "sequential: frame after frame, each started from the previous one warped "
                       "along the optical flow and held to it (Ruder et al. 2016); multipass: a window of frames "
                       "optimised together in passes alternating forward and backward in time (Ruder et al. 2018), "
                       "one program split over all devices; independent: every frame on its own (flickers)",
                       choices=VIDEO_MODES)
    temporal_weight: float = _field(200.0, "weight of the temporal loss: the squared difference to the previous "
                                    "stylized frame warped onto this one, where the flow is trusted")
    long_term: int = _field(1, "sequential: hold each frame to this many earlier frames, 1, 2, 4, ... frames "
                            "back, each pixel to the nearest that shows it (Ruder et al.'s long-term consistency)",
                            metavar="N")
    passes: int = _field(4, "multipass: passes over each window; the first paints from the content with half of "
                         "--steps, the others share the rest", metavar="N")
    window: int = _field(8, "multipass and independent: at most this many frames optimised together as one "
                         "program (a clip is cut into windows of even sizes, each rounded up to a multiple of the "
                         "device count)", metavar="N")
    blend: float = _field(0.5, "multipass: how much of its warped neighbour a frame takes before each pass (delta)")
    flow_preset: str = _field("fine", "optical flow (OpenCV DIS): OpenCV's presets, fastest first, or fine, "
                              "a few times more accurate at 20 times medium's time (50 ms a 256 px pair)",
                              choices=FLOW_PRESETS)

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_choices(self)
        if not self.temporal_weight >= 0:
            raise UsageError(f"`temporal_weight` must be zero or positive, got {self.temporal_weight:g}")
        for name in ("long_term", "passes", "window"):
            if getattr(self, name) < 1:
                raise UsageError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.blend <= 1:
            raise UsageError(f"`blend` must be in [0, 1], got {self.blend:g}")


TRANSFORM_ARCHITECTURES = ("johnson", "johnson_half", "tiny")  # `jaxstyle.transform.ARCHITECTURES`
# The settings of `StylizeConfig` that a feed-forward network is trained with: they mean the same there.
LOSS_SETTINGS = ("content_weight", "style_weight", "tv_weight", "content_layers", "style_layers",
                 "content_layer_weights", "style_layer_weights", "pooling", "style_scale", "style_loss")


def _as_in_stylize(name: str) -> Any:
    """The field of `StylizeConfig` called ``name``: the same default and help, declared once."""
    f = StylizeConfig.__dataclass_fields__[name]
    return dataclasses.field(default=f.default, metadata=f.metadata)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of training a feed-forward style network (`jaxstyle.feedforward.train`).

    The loss settings (`LOSS_SETTINGS`) are `StylizeConfig`'s, with its defaults: a network trained with
    ``style_weight`` 10 aims at what ``jaxstyle stylize --style-weight 10`` paints.
    """

    architecture: str = _field("johnson", "the network: Johnson et al.'s, or half as wide (a quarter of the "
                               "FLOPs, for CPUs); tiny is for tests", choices=TRANSFORM_ARCHITECTURES)
    size: int = _field(256, "side of the square crops of the photos it trains on, in pixels")
    steps: int = _field(2000, "training steps (batches of photos)")
    batch_size: int = _field(4, "photos per step, split over all devices")
    lr: float = _field(1e-3, "Adam learning rate of the network's weights")
    seed: int = _field(0, "random seed: the initial weights, and the photos' order, crops, scales and flips")
    content_weight: float = _as_in_stylize("content_weight")
    style_weight: float = _as_in_stylize("style_weight")
    tv_weight: float = _as_in_stylize("tv_weight")
    content_layers: tuple[str, ...] = _as_in_stylize("content_layers")
    style_layers: tuple[str, ...] = _as_in_stylize("style_layers")
    content_layer_weights: tuple[float, ...] = _as_in_stylize("content_layer_weights")
    style_layer_weights: tuple[float, ...] = _as_in_stylize("style_layer_weights")
    pooling: str = _as_in_stylize("pooling")
    style_scale: float = _as_in_stylize("style_scale")
    style_loss: str = _as_in_stylize("style_loss")

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_choices(self)
        for name in ("size", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"`{name}` must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UsageError(f"`lr` must be positive, got {self.lr:g}")
        self.loss_config()  # refuses what `StylizeConfig` refuses

    def loss_config(self) -> StylizeConfig:
        """The `StylizeConfig` whose losses training minimises, at the crops' size."""
        return StylizeConfig(size=self.size, **{name: getattr(self, name) for name in LOSS_SETTINGS})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# Save a run's state every 100 steps: a checkpoint is a few image-sized arrays
# (4 MB at 384 px with Adam, 30 MB with L-BFGS), written in milliseconds, while
# 100 steps take seconds on a GPU and minutes on a CPU; runs of the default 300
# steps get two, and short test runs none.
CHECKPOINT_EVERY = 100
LOG_EXTENSIONS = (".json", ".csv")
DEFAULT_MAX_PIXELS = 200_000_000  # a 200 MP image already takes 2.4 GB as float32 RGB


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a command runs and what it keeps, beside the settings that shape the picture.

    Every command that optimises (``stylize``, ``demo``, ``batch``, ``sweep``)
    takes these; the command line derives one flag from each field. Side files
    are named after the full output name (`jaxstyle.outputs`).
    """

    weights: str = _field("", "weights file (default: $JAXSTYLE_WEIGHTS or the user cache)", metavar="FILE")
    overwrite: bool = _field(False, "replace outputs that exist, and start afresh over an unfinished run's "
                             "checkpoint (never replaces an input)", action="store_true")
    resume: bool = _field(False, "continue the unfinished run saved in OUT.checkpoint.npz; the settings and "
                          "input files must be those of the saved run", action="store_true")
    checkpoint_every: int = _field(CHECKPOINT_EVERY, "every N steps, save the run (image, optimiser state, step, "
                                   "settings) to OUT.checkpoint.npz for --resume; it is also saved when the run is "
                                   "interrupted (Ctrl-C, SIGTERM, SIGHUP) and removed when it finishes; 0: only then",
                                   metavar="N")
    save_every: int = _field(0, "also write the picture every N steps, as OUT.stepNNNNN.png (0: never)", metavar="N")
    log: str = _field("", "write the loss per step to FILE (.json or .csv)", metavar="FILE")
    png_bits: int = _field(8, "bits per channel of PNG pictures: 16 for print (TIFF pictures always have 16, "
                           "JPEG and WebP 8)", choices=PNG_BITS)
    quiet: bool = _field(False, "no progress bar and no summary", action="store_true")
    shard_image: bool = _field(False, "split each image's rows over all devices (an image too big for one "
                               "device); the result equals an unsharded run", action="store_true")
    max_pixels: int = _field(DEFAULT_MAX_PIXELS, "refuse input images with more pixels than this, before "
                             "decoding them", metavar="N")
    serve: str = _field("", "show the run on a live web page at [ADDRESS:]PORT (default address 127.0.0.1; 0: any "
                        "free port): the picture, the loss and its terms, and a stop button; an address beyond this "
                        "machine needs the random token in the printed URL", metavar="[ADDRESS:]PORT")
    max_memory: float = _field(0.0, "memory the run may use, in GiB: it plans whole-image or strip-by-strip "
                               "steps to fit (0: on a CPU 4 GiB or half of the memory available now if less, more "
                               "only for a run that fits no other way; on a GPU or TPU the device's free memory)", metavar="GIB")

    def __post_init__(self) -> None:
        _check_finite(self)
        _check_choices(self)
        if not self.max_memory >= 0:
            raise UsageError(f"`max_memory` must be zero or positive, got {self.max_memory:g}")
        for name in ("checkpoint_every", "save_every"):
            if getattr(self, name) < 0:
                raise UsageError(f"`{name}` must be zero or positive, got {getattr(self, name)}")
        if self.max_pixels < 1:
            raise UsageError(f"`max_pixels` must be at least 1, got {self.max_pixels}")
        if self.serve:
            from jaxstyle.live import parse_address

            parse_address(self.serve)
        if self.log and not self.log.lower().endswith(LOG_EXTENSIONS):
            raise UsageError(f"`log` must end in {' or '.join(LOG_EXTENSIONS)}, got {self.log}")


# Options of the commands themselves (not settings), which messages also name.
COMMAND_OPTIONS = ("batch_size", "distributed", "coordinator_address", "num_processes", "process_id", "columns",
                   "start", "end", "frames", "fps")


def flag(name: str) -> str:
    """The command-line flag of a setting: ``style_blend`` -> ``--style-blend``."""
    return "--" + name.replace("_", "-")


def as_flags(message: str) -> str:
    """A library message as the command line says it: `` `style_blend` `` -> ``--style-blend``."""
    names = ({f.name for cls in (StylizeConfig, RunOptions, VideoConfig) for f in dataclasses.fields(cls)}
             | set(COMMAND_OPTIONS))
    return re.sub(r"`([a-z_]+)`", lambda m: flag(m[1]) if m[1] in names else m[0], message)
