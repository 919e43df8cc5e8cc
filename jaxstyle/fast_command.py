"""``jaxstyle train``, ``jaxstyle apply`` and ``jaxstyle model info``: fast style on the command line.

- ``train STYLE... --images DIR... -o MODEL``: trains a network (`jaxstyle.feedforward`; one network
  holds every style given) on random crops of the photos (`jaxstyle.train_data`, prefetched on a
  thread), with a progress bar, checkpoints every ``--checkpoint-every`` steps and on
  Ctrl-C/SIGTERM/SIGHUP (exit 130, 143, 129), ``--resume``, and the model written at the end
  (`jaxstyle.model_file`).
- ``apply MODEL INPUTS... -o OUTDIR``: paints files, folders and globs, named and skipped as ``jaxstyle
  batch`` names and skips them; ``--style-blend`` mixes a model's styles.
- ``model info MODEL``: what a model file holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import pathlib
import sys
import time

from jaxstyle import batch_io, images, model_file, outputs, plan, report, train_data, weights
from jaxstyle._files import atomic_write_bytes
from jaxstyle.commands import check_distributed_options, checkpoint_state, note, start_processes
from jaxstyle.config import RunOptions, TrainConfig
from jaxstyle.errors import JaxstyleError, Stopped, UsageError

CHECKPOINT_SUFFIX = ".checkpoint.msgpack"


def train(args: argparse.Namespace, config: TrainConfig, options: RunOptions) -> int:
    """``jaxstyle train``: with ``--distributed``, every process runs it; process 0 reports and writes the model."""
    check_distributed_options(args)
    style_paths, output = [pathlib.Path(s) for s in args.style], pathlib.Path(args.output)
    paths, skipped = train_data.training_images(args.images, max_pixels=options.max_pixels)
    every_input = outputs.inputs_by_path([*(("a style image", s) for s in style_paths),
                                          *(("a training photo", p) for p in paths)])
    outputs.check_not_inputs([("the model", output)], every_input)
    if output.exists() and not options.overwrite:
        raise UsageError(f"{str(output)!r} exists; pass `overwrite` to replace it")
    styles = [images.load_image(s, max_pixels=options.max_pixels) for s in style_paths]
    shapes = [images.image_shape(p, max_pixels=options.max_pixels) for p in paths]
    process, processes = start_processes(args)  # JAX starts here, after the checks
    # Every process keeps its own checkpoint (the states are the same; hosts need not share a disk).
    ckpt = output.with_name(output.name + (f".process{process}" if processes > 1 else "") + CHECKPOINT_SUFFIX)
    outputs.check_not_inputs([("the checkpoint", ckpt)], every_input)
    resume = checkpoint_state(ckpt, options)
    if process == 0:
        for path, why in skipped:
            note(f"skipped {path}: {why}")
    else:
        options = dataclasses.replace(options, quiet=True)
    params, meta = weights.load(options.weights or None)
    plan.check_layers(config.loss_config(), plan.ARCHITECTURES[meta["architecture"]][0])
    record = _record(config, style_paths, paths, meta)
    from jaxstyle import feedforward, step

    trainer = feedforward.Trainer(step.Network(weights.model_for(meta), params), styles, config)
    state = _load_checkpoint(ckpt, trainer, record) if resume else None
    started = time.perf_counter()
    state, waited, losses = _fit(trainer, state, paths, shapes, ckpt, record, options)
    seconds = time.perf_counter() - started
    state = feedforward.host(state)
    training = {**record["training"], "steps_done": int(state.step), "final_loss": losses[-1] if losses else None,
                "seconds": round(seconds, 1), "data_wait_seconds": round(waited, 2),
                "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if process == 0:
        model_file.save(output, state.params, {**{k: v for k, v in record.items() if k != "training"},
                                               "training": training})
    report.remove(ckpt)
    if not options.quiet:
        print(f"wrote {output} ({config.steps} steps in {seconds:.0f} s; the photos kept the device waiting "
              f"{waited:.1f} s)", file=sys.stderr)
    return 0


def _fit(trainer, state, paths, shapes, ckpt: pathlib.Path, record: dict, options: RunOptions):
    """Train to the end with the progress bar, checkpoints, and a checkpoint when a signal ends the run.

    Returns:
      ``(state, waited, losses)``: the final state, the seconds the device waited for photos, each step's loss.
    Raises:
      Stopped: a signal ended the run (its checkpoint saved).
    """
    from jaxstyle import feedforward

    config = trainer.config
    done = 0 if state is None else int(state.step)
    bar = None if options.quiet else report.progress_bar(config.steps, done)
    latest = {"state": state}
    losses: list[float] = []

    def on_report(p) -> None:
        latest["state"] = p.state
        losses.extend(map(float, p.loss))
        signals.check()  # a signal whose first raise was lost (`report.Signals`) saves this step
        if options.checkpoint_every and p.step % options.checkpoint_every == 0 and p.step < p.steps:
            _save_checkpoint(ckpt, p.state, record)
        if bar is not None:
            bar.set_postfix(loss=f"{p.loss[-1]:.4g}", style=f"{p.terms['style']:.3g}",
                            content=f"{p.terms['content']:.3g}", waited=f"{p.waited:.1f}s", refresh=False)
            bar.update(p.step - bar.n)

    with report.signals_end_runs() as signals:
        try:
            with train_data.Prefetcher(paths, shapes, seed=config.seed, batch_size=config.batch_size,
                                       size=config.size, start=done, stop=config.steps, rows=trainer.rows,
                                       on_unreadable=lambda path, why: note(f"skipped {path}: {why}")) as batches:
                state = feedforward.train(batches, trainer, state=state, callback=on_report)
                return state, batches.waited, losses
        except report.Interrupted as e:
            if latest["state"] is None:
                raise Stopped(f"interrupted ({e}) before the first steps finished; nothing to save",
                              e.exit_code) from None
            _save_checkpoint(ckpt, latest["state"], record)
            raise Stopped(f"interrupted ({e}) at step {int(feedforward.host(latest['state'].step))}; saved {ckpt} "
                          "(continue with --resume)", e.exit_code) from None
        finally:
            if bar is not None:
                bar.close()


def _record(config: TrainConfig, style_paths: list[pathlib.Path], paths, meta: dict) -> dict:
    """What identifies a training run: its settings, the style images, the photos and the VGG weights."""
    photos = hashlib.sha256("\n".join(p.name for p in paths).encode()).hexdigest()
    return {"architecture": config.architecture,
            "styles": [{"name": s.name, "sha256": hashlib.sha256(s.read_bytes()).hexdigest()} for s in style_paths],
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()},
            "training": {"photos": len(paths), "photos_sha256": photos, "vgg": meta["architecture"],
                         "vgg_sha256": meta["params_sha256"]}}


def _save_checkpoint(path: pathlib.Path, state, record: dict) -> None:
    """The training state and its record, as msgpack (`flax.serialization`: no code can ride in it)."""
    from flax import serialization

    from jaxstyle import feedforward

    data = serialization.msgpack_serialize({"record": json.dumps(record, sort_keys=True),
                                            "state": serialization.to_state_dict(feedforward.host(state))})
    atomic_write_bytes(path, data)


def _load_checkpoint(path: pathlib.Path, trainer, record: dict):
    """The state saved in ``path``, checked against this run's record and the network's structure."""
    from flax import serialization

    from jaxstyle import feedforward

    try:
        saved = serialization.msgpack_restore(path.read_bytes())
        saved_record = json.loads(saved["record"])
        state = serialization.from_state_dict(feedforward.host(trainer.init()), saved["state"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"cannot resume from {str(path)!r}: it is damaged or not a training checkpoint "
                         f"({str(e).splitlines()[0][:120]}); pass `overwrite` to start afresh") from None
    differs = sorted(k for k in set(record) | set(saved_record) if record.get(k) != saved_record.get(k))
    if differs:
        raise UsageError(f"cannot resume from {str(path)!r}: its {', '.join(differs)} differ from this run's; "
                         "run with the same settings, style and photos, or pass `overwrite` to start afresh")
    return state


# ----------------------------------------------------------------------------
# apply


def apply(args: argparse.Namespace, options: RunOptions) -> int:
    """``jaxstyle apply``."""
    model_path = pathlib.Path(args.model)
    from jaxstyle import feedforward, transform

    params, meta = model_file.load(model_path, expected_shapes=transform.expected_shapes)
    outdir = outputs.check_output_dir(args.output_dir)
    files, problems = batch_io.expand_inputs(args.inputs)
    model_input = outputs.inputs_by_path([("the model", model_path)])
    contents, outs, notes = outputs.plan_batch(files, outdir, args.ext, model_input)
    # A video in, a video out: OUTDIR/<stem> with its container (H.264), never over an input.
    outs = [_clip_output(c, o) if _is_clip(c) else o for c, o in zip(contents, outs)]
    outputs.check_not_inputs([(f"the output of {str(c)!r}", o) for c, o in zip(contents, outs) if _is_clip(c)],
                             {**model_input, **outputs.inputs_by_path([("an input", c) for c in contents])})
    for line in notes:
        note(line)
    failed = [arg for arg, _ in problems]
    for arg, message in problems:
        note(f"skipped {arg}: {message}")
    todo = [i for i in range(len(contents)) if options.overwrite or not outs[i].exists()]
    done = len(contents) - len(todo)
    model = transform.model_for(meta["architecture"], len(meta["styles"]))
    blend = _style_blend(tuple(w for part in args.style_blend for w in part), meta["styles"])
    written, started = 0, time.perf_counter()
    for i in [i for i in todo if _is_clip(contents[i])]:
        try:
            _apply_clip(model, params, blend, contents[i], outs[i], args, options)
            written += 1
        except JaxstyleError as e:
            note(f"skipped {contents[i]}: {e}")
            failed.append(str(contents[i]))
    todo = [i for i in todo if not _is_clip(contents[i])]
    for at in range(0, len(todo), args.batch_size):
        chunk, pictures = [], []
        for i in todo[at:at + args.batch_size]:
            try:
                picture = images.load_image(contents[i], max_pixels=options.max_pixels)
            except JaxstyleError as e:
                note(f"skipped {contents[i]}: {e}")
                failed.append(str(contents[i]))
                continue
            if args.size:
                picture = images.resize_to(picture, plan.output_shape(picture.shape, args.size))
            chunk.append(i)
            pictures.append(picture)
        painted = feedforward.stylize_images(model, params, pictures, style=blend, batch_size=args.batch_size)
        for i, picture in zip(chunk, painted):
            images.save_image(outs[i], picture, overwrite=options.overwrite,
                              metadata={"jaxstyle": "apply", "model": model_path.name,
                                        "style": ", ".join(f"{s['name']} {w:.3g}" for s, w in
                                                           zip(meta["styles"], blend) if w > 0)})
            written += 1
    seconds = time.perf_counter() - started
    note("apply: " + outputs.summary(len(contents) + len(problems), written, done, failed, seconds))
    return 1 if failed else 0


def _style_blend(weights: tuple[float, ...], styles: list[dict]) -> list[float]:
    """``--style-blend``'s weights, one per style of the model, scaled to sum to 1 (default: the first style)."""
    if not weights:
        return [1.0] + [0.0] * (len(styles) - 1)
    if len(weights) != len(styles):
        names = ", ".join(s["name"] for s in styles)
        raise UsageError(f"`style_blend` has {len(weights)} weights but the model holds {len(styles)} "
                         f"style{'s' if len(styles) > 1 else ''} ({names}); give one weight per style")
    if any(w < 0 for w in weights) or not sum(weights) > 0:
        raise UsageError(f"`style_blend` weights must be zero or positive and not all zero, got {list(weights)}")
    return [w / sum(weights) for w in weights]


def _is_clip(path: pathlib.Path) -> bool:
    from jaxstyle.video_io import VIDEO_EXTENSIONS

    return path.suffix.lower() in VIDEO_EXTENSIONS


def _clip_output(source: pathlib.Path, image_output: pathlib.Path) -> pathlib.Path:
    from jaxstyle.video_io import WRITABLE_VIDEO

    suffix = source.suffix.lower()
    return image_output.with_name(source.stem + (suffix if suffix in WRITABLE_VIDEO else ".mp4"))


def _apply_clip(model, params, blend: list[float], source: pathlib.Path, output: pathlib.Path,
                args: argparse.Namespace, options: RunOptions) -> None:
    """Paint a video frame by frame (no temporal loss: `jaxstyle video` is the flicker-free way) and write it
    at the source's rate, with its sound."""
    from jaxstyle import feedforward, video_io

    clip = video_io.read_clip(source, max_pixels=options.max_pixels, size=args.size or None)
    painted = feedforward.stylize_images(model, params, clip.frames, style=blend, batch_size=args.batch_size)
    video_io.write_clip(output, painted, clip.fps, audio=clip.audio, overwrite=options.overwrite)


def model_info(args: argparse.Namespace) -> int:
    """``jaxstyle model info``."""
    for line in model_file.describe(pathlib.Path(args.model)):
        print(line)
    return 0
