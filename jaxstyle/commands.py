"""The commands that optimise, from files to files: ``stylize`` (and ``demo``), ``batch`` and ``sweep``.

Each command does the same four things, in this order:

1. It checks every option and path and loads every input before JAX starts
   (`plan`, `outputs`, `images`, `weights`): a mistake costs milliseconds and
   writes nothing.
2. It starts JAX and puts the network on the device.
3. It runs the library one program at a time (`optimize.run`), with a
   `report.Reporter` as the callback that keeps each program's checkpoint.
4. It writes the outputs, and only then removes the checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
from typing import Sequence

import numpy as np

from jaxstyle import __version__, batch_io, images, memory, outputs, plan, report, weights
from jaxstyle.config import RunOptions, StylizeConfig, as_flags
from jaxstyle.errors import JaxstyleError, UsageError

EXAMPLES = pathlib.Path(__file__).parent / "examples"
DEMO_CONTENT = EXAMPLES / "chelsea.png"
DEMO_STYLE = EXAMPLES / "van_gogh_auvers.png"


@dataclasses.dataclass
class Inputs:
    """What every command reads besides its content images, loaded and checked before JAX starts.

    Attributes:
      config, options: the settings and the run options.
      files: ``(role, path)`` of every input file (content, styles, masks, init), in order.
      styles: the style images; init: the init image or None; masks: (content, style) pairs or None.
      params, meta: the weights (NumPy) and their metadata.
    """

    config: StylizeConfig
    options: RunOptions
    files: list[tuple[str, pathlib.Path]]
    styles: list[np.ndarray]
    init: np.ndarray | None
    masks: list[tuple[np.ndarray, np.ndarray]] | None
    params: dict
    meta: dict

    @property
    def schedule(self) -> StylizeConfig:
        """The settings the run goes by: one that starts from a smaller finished output continues it
        at the next scale (`plan.continuing`); records keep ``config``, what was asked."""
        return self.config if self.init is None else plan.continuing(self.config, self.init.shape)

    @property
    def by_path(self) -> dict[pathlib.Path, str]:
        return outputs.inputs_by_path(self.files)

    @property
    def architecture(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(convolutions per block, channels per block) of the network."""
        return plan.ARCHITECTURES[self.meta["architecture"]]

    @property
    def blocks(self) -> tuple[int, ...]:
        return self.architecture[0]

    def load(self, path: str | pathlib.Path) -> np.ndarray:
        return _load(path, self.options)

    def metadata(self, config: StylizeConfig, content: str) -> dict[str, str]:
        """The text every output records: version, inputs, settings, seed and weights."""
        return {"jaxstyle": __version__, "content": content,
                "style": " ".join(p.name for role, p in self.files if role.startswith("style image")),
                "settings": json.dumps(dataclasses.asdict(config)), "seed": str(config.seed),
                "weights_sha256": self.meta["params_sha256"]}


def read_inputs(args: argparse.Namespace, config: StylizeConfig, options: RunOptions,
                contents: Sequence[tuple[str, pathlib.Path]]) -> Inputs:
    """Load and check the style images, masks, init image and weights (no JAX)."""
    styles = [pathlib.Path(p) for p in args.style]
    files = [*contents, *((f"style image {i}", p) for i, p in enumerate(styles, 1))]
    pairs = _mask_paths(args, len(styles))
    for i, (c, s) in enumerate(pairs or (), 1):
        files += [(f"content mask {i}", c), (f"style mask {i}", s)]
    if config.init not in ("content", "noise"):
        files.append(("the init image", pathlib.Path(config.init)))
    plan.check_styles(config, len(styles), None if pairs is None else len(pairs))
    plan.check_layout(config, rows=options.shard_image)
    plan.scale_steps(config)  # refuses a step count per scale that does not fit the scales
    masks = None if pairs is None else [(_load(c, options).mean(-1), _load(s, options).mean(-1)) for c, s in pairs]
    if masks is not None:
        plan.check_mask_coverage([c for c, _ in masks])
    init = None if config.init in ("content", "noise") else _load(config.init, options)
    inputs = Inputs(config, options, files, [_load(p, options) for p in styles], init, masks,
                    *weights.load(options.weights or None))
    plan.check_layers(config, inputs.blocks)
    return inputs


def _load(path: str | pathlib.Path, options: RunOptions) -> np.ndarray:
    return images.load_image(path, max_pixels=options.max_pixels)


def _mask_paths(args: argparse.Namespace, n_styles: int) -> list[tuple[pathlib.Path, pathlib.Path]] | None:
    content_masks, style_masks = getattr(args, "content_mask", None) or [], getattr(args, "style_mask", None) or []
    if not content_masks and not style_masks:
        return None
    if len(content_masks) != len(style_masks) or len(content_masks) != n_styles:
        raise UsageError(f"got {len(content_masks)} --content-mask and {len(style_masks)} --style-mask for "
                         f"{n_styles} style image(s); give one pair per style image")
    return [(pathlib.Path(c), pathlib.Path(s)) for c, s in zip(content_masks, style_masks)]


def plan_memory(inputs: Inputs, content_shape: Sequence[int], *, items: int = 1) -> memory.MemoryPlan:
    """Whole-image or strip-by-strip steps that fit the memory (`memory.plan_memory`); JAX starts here.

    The memory is `max_memory` when given, else on a CPU at most
    `memory.CPU_MEMORY` (4 GiB) or half of the host's memory available now,
    whichever is less, so that the machine stays usable: at 2048 px the whole
    image is 1.4 times as fast as strips and takes 2.6 times the memory
    (BENCHMARKS.md), and the top scale is a third of a coarse-to-fine run. A
    run that fits in no strips within that may take up to half of what is
    available. On a GPU or TPU it is the device's free memory (where it does
    not say, the run goes as configured). A plan in strips made before JAX
    starts also selects the XLA:CPU convolutions that keep the least working
    memory.

    Raises:
      UsageError: not even the smallest strips fit; names the largest size that does.
    """
    import jax

    from jaxstyle import runtime

    blocks, widths = inputs.architecture
    styles = [s.shape for s in inputs.styles]

    def chosen(budget: int | None, source: str) -> memory.MemoryPlan:
        return memory.plan_memory(inputs.schedule, content_shape, blocks, widths, styles, items=items,
                                  budget=budget, source=source)

    given, half = inputs.options.max_memory, (memory.available_memory() or 0) // 2
    if given:
        budgets = [(round(given * 2**30), "allowed by `max_memory`")]
    elif half > memory.CPU_MEMORY:
        budgets = [(memory.CPU_MEMORY, "a CPU run's default (`max_memory` sets another)"),
                   (half, "half of what is available")]
    else:
        budgets = [(half or None, "half of what is available")]
    result = None
    for budget, source in budgets:
        try:
            result = chosen(budget, source)
            break
        except UsageError:
            if given:
                raise
            # else a larger budget, or a GPU or TPU, may hold it (decided once JAX says which backend runs)
    if result is None or result.config.remat:
        runtime.add_low_memory_cpu_flags()  # before JAX starts (a no-op where it has)
    if not given and jax.default_backend() != "cpu":
        result = chosen(runtime.device_memory(), "free on the device")
    elif result is None:
        result = chosen(*budgets[-1])  # raises, naming the largest size that fits
    return result


def say_plan(inputs: Inputs, chosen: memory.MemoryPlan, content_shape: Sequence[int],
             work: Sequence[tuple[int, int]] = (), speed_key: str = "") -> None:
    """The plan in one line (unless `quiet`): size, memory, and the time a run of ``work`` FLOPs takes
    at the speed of the last such run here (`report.remembered_speed`)."""
    if inputs.options.quiet:
        return
    line = f"plan: {chosen.describe(content_shape, inputs.blocks)}"
    if work:
        rate = report.remembered_speed(speed_key)
        line += (f"; {report.duration(sum(n * f for n, f in work) / rate)} of steps at the speed of the "
                 "last such run" if rate else "; the time left shows once the first steps have run")
    note(line)


def network(inputs: Inputs):
    """The network on the device (JAX starts here): one copy of the weights, never copied again."""
    import jax

    from jaxstyle import step

    return step.Network(weights.model_for(inputs.meta), jax.device_put(inputs.params))


def layout(options: RunOptions, many: bool):
    """The program layout the options ask for: rows over devices, else the batch over devices (or one)."""
    from jaxstyle import sharding

    if options.shard_image:
        return sharding.rows()
    return sharding.batch() if many else sharding.single()


def checkpoint_state(path: pathlib.Path, options: RunOptions) -> bool:
    """Whether to resume from ``path``; refuses a missing one with --resume and a left one without."""
    if options.resume and not path.is_file():
        raise UsageError(f"`resume`: there is no checkpoint {str(path)!r} to continue (it is saved every "
                         "`checkpoint_every` steps and when a run is interrupted, and removed when it finishes)")
    if not options.resume and not options.overwrite and path.exists():
        raise UsageError(f"{str(path)!r} holds an unfinished run; pass `resume` to continue it, "
                         "or `overwrite` to start afresh")
    return options.resume


# ----------------------------------------------------------------------------
# stylize and demo


def stylize(args: argparse.Namespace, config: StylizeConfig, options: RunOptions) -> int:
    """``jaxstyle stylize`` and ``jaxstyle demo``."""
    demo = args.command == "demo"
    content_path = DEMO_CONTENT if demo else pathlib.Path(args.content)
    if demo:
        args.style = [str(DEMO_STYLE)]
    inputs = read_inputs(args, config, options, [("the content image", content_path)])
    output = pathlib.Path(args.output)
    side = outputs.check_output(output, inputs.by_path, overwrite=options.overwrite)
    outputs.check_log(options.log, inputs.by_path, [output])
    resume = checkpoint_state(side.checkpoint, options)
    content = inputs.load(content_path)
    plan.check_sizes(inputs.schedule, inputs.blocks, content.shape, [s.shape for s in inputs.styles])
    chosen = plan_memory(inputs, content.shape)  # JAX starts here, after the checks
    planned = chosen.config
    work = plan.scale_work(planned, content.shape, *inputs.architecture)
    speed_key = report.speed_key(planned, inputs.meta["architecture"])
    say_plan(inputs, chosen, content.shape, work, speed_key)
    from jaxstyle import checkpoint, optimize

    net = network(inputs)
    record = checkpoint.run_record(config, [(r, p) for r, p in inputs.files], inputs.meta["params_sha256"],
                                   output=output.name)
    state, history = checkpoint.load(side.checkpoint, record, planned, content.shape) if resume else (None, None)
    reporter = report.Reporter(options, plan.total_steps(planned), 0 if history is None else history.shape[1],
                               command=args.command)
    metadata = inputs.metadata(config, content_path.name)
    saver = _picture_saver(side, metadata, options.png_bits)
    reporter.start(report.Program([content_path.name], side.checkpoint, record, saver, [side.interrupted], history,
                                  work, speed_key))
    with reporter.running(planned):
        [result] = optimize.run([content], inputs.styles, net, [planned], init=inputs.init, masks=inputs.masks,
                                callback=reporter, report_every=report_every(options), resume=state,
                                layout=layout(options, many=False))
    if isinstance(result, optimize.NonFiniteLoss):
        return _diverged(result, side, metadata)
    reporter.keep_or_write(output, result, metadata, overwrite=options.overwrite,
                           alpha=output_alpha(content_path, options, result.shape))
    reporter.finish()
    reporter.write_log(single=True)
    if not options.quiet:
        print(f"wrote {output} ({result.shape[1]}x{result.shape[0]})", file=sys.stderr)
    return 0


def output_alpha(content_path: pathlib.Path, options: RunOptions, shape: Sequence[int]) -> np.ndarray | None:
    """The content image's transparency at the output's ``shape``, or None: transparent stays transparent.

    The optimisation sees the content composited over white (`images.load_image`).
    """
    alpha = images.load_alpha(content_path, max_pixels=options.max_pixels)
    return None if alpha is None else images.resize_to(alpha[..., None], tuple(shape[:2]))[..., 0]


def report_every(options: RunOptions) -> int:
    """Steps between reports: snapshots and checkpoints fall on multiples of it."""
    from jaxstyle.step import CHUNK

    return math.gcd(CHUNK, options.save_every, options.checkpoint_every)


def _picture_saver(side: outputs.SideFiles, metadata: dict[str, str], png_bits: int):
    """Save a single run's picture as a snapshot or when interrupted (``report.Program.save_pictures``)."""
    def save(p, why: str) -> list[pathlib.Path]:
        path = side.snapshot(p.step) if why == "step" else side.interrupted
        images.save_image(path, np.clip(np.asarray(p.images[0]), 0, 1), overwrite=True,
                          metadata={**metadata, "step": str(p.step)}, png_bits=png_bits)
        return [path]

    return save


def _diverged(error, side: outputs.SideFiles, metadata: dict[str, str]) -> int:
    """The loss became NaN or Inf: keep the last finite picture, drop the checkpoint (it would diverge again)."""
    images.save_image(side.last_finite, error.image, overwrite=True, metadata={**metadata, "step": str(error.step)})
    report.remove(side.checkpoint)
    raise JaxstyleError(f"{error}; the last finite image (step {error.step}) is in {side.last_finite}")


# ----------------------------------------------------------------------------
# batch


@dataclasses.dataclass
class _Batch:
    """A `jaxstyle batch` run: its files, where it stands, and what it has written or failed."""

    args: argparse.Namespace
    inputs: Inputs
    contents: list[pathlib.Path]
    outs: list[pathlib.Path]
    written: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)
    planned: dict = dataclasses.field(default_factory=dict)  # shape -> the settings `plan_memory` chose for it

    def fail(self, name: str, message: str, reporter: report.Reporter | None = None) -> None:
        self.failed.append(name)
        (reporter.note if reporter is not None else note)(f"error: {message}; skipped")

    def prepared(self, i: int, exact: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
        """Input ``i`` resized to its exact shape (as `optimize.run` resizes), then padded or cropped to its bucket."""
        from jaxstyle import step

        content = np.asarray(step.resize(self.inputs.load(self.contents[i]), exact))
        return batch_io.crop_from(content, shape) if self.args.bucket == "crop" else batch_io.pad_to(content, shape)

    def record(self, items: Sequence[tuple[int, tuple[int, int]]], shape: tuple[int, int]) -> dict:
        """The checkpoint record of one program: the run, and which files in which shapes it holds."""
        from jaxstyle import checkpoint

        files = [*self.inputs.files, *((f"content image {k}", self.contents[i]) for k, (i, _) in enumerate(items, 1))]
        return checkpoint.run_record(self.inputs.config, files, self.inputs.meta["params_sha256"],
                                     output=str(self.outs[0].parent), bucket=[self.args.bucket, self.args.bucket_step],
                                     shape=list(shape), items=[str(self.contents[i]) for i, _ in items],
                                     exact=[list(e) for _, e in items])


def batch(args: argparse.Namespace, config: StylizeConfig, options: RunOptions) -> int:
    """``jaxstyle batch``: every input file in the style, in programs of ``--batch-size`` images."""
    _check_batch_options(args)
    outdir = outputs.check_output_dir(args.output_dir)
    files, problems = batch_io.expand_inputs(args.inputs)
    inputs = read_inputs(args, config, options, [])
    contents, outs, notes = outputs.plan_batch(files, outdir, args.ext, inputs.by_path)
    every_input = {**inputs.by_path, **outputs.inputs_by_path([("a content image", f) for f in contents])}
    outputs.check_log(options.log, every_input, outs)
    run = _Batch(args, inputs, contents, outs)
    process, processes = start_processes(args)  # JAX starts here, after the checks
    ckpt = outdir / ("batch.checkpoint.npz" if processes == 1 else f"batch.process{process}.checkpoint.npz")
    resume = checkpoint_state(ckpt, options)
    if process == 0:  # every process sees the same arguments; one reports them
        for arg, message in problems:
            run.fail(arg, message)
        for line in notes:
            note(line)
    mine = list(range(process, len(contents), processes))
    todo = [i for i in mine if options.overwrite or not outs[i].exists()]
    resumed = _resumed_program(run, ckpt) if resume else None
    queue = _buckets(run, [i for i in todo if resumed is None or i not in {item[0] for item in resumed[0]}])
    n_items = sum(len(m) for m in queue.values()) + (0 if resumed is None else len(resumed[0]))
    net, lay = network(inputs), layout(options, many=True)
    reporter = report.Reporter(options, plan.total_steps(inputs.schedule) * n_items,
                               0 if resumed is None else resumed[3].shape[1] * len(resumed[0]), command="batch")
    with reporter.running(config, lambda: f"; {run.written} outputs written in this run"):
        if resumed is not None:
            items, shape, state, history = resumed
            _batch_program(run, reporter, net, lay, items, shape, plan.program_size(len(items), len(items),
                                                                                  lay.devices), ckpt, state, history)
        for shape, members in queue.items():
            size = plan.program_size(len(members), args.batch_size, lay.devices)
            for items in _loaded(run, members, shape, size):
                _batch_program(run, reporter, net, lay, items, shape, size, ckpt)
    reporter.write_log(single=False)
    who = f" (process {process} of {processes})" if processes > 1 else ""
    inputs_seen = len(mine) + (len(problems) if process == 0 else 0)
    note(f"batch{who}: " + outputs.summary(inputs_seen, run.written, len(mine) - len(todo), run.failed))
    return 1 if run.failed else 0


def _check_batch_options(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise UsageError(f"`batch_size` must be at least 1, got {args.batch_size}")
    batch_io.bucket_shape((16, 16), 16, policy=args.bucket, step=args.bucket_step)  # refuses bad values
    check_distributed_options(args)


def check_distributed_options(args: argparse.Namespace) -> None:
    """Refuse ``--coordinator-address``, ``--num-processes`` or ``--process-id`` without ``--distributed``, or
    out of range (before JAX starts)."""
    given = [a for a in ("coordinator_address", "num_processes", "process_id") if getattr(args, a) is not None]
    if given and not args.distributed:
        raise UsageError(f"`{given[0]}` needs `distributed`")
    if args.num_processes is not None and args.num_processes < 1:
        raise UsageError(f"`num_processes` must be at least 1, got {args.num_processes}")
    if args.process_id is not None and not 0 <= args.process_id < (args.num_processes or math.inf):
        raise UsageError(f"`process_id` must be from 0 to `num_processes` - 1, got {args.process_id}")


def start_processes(args: argparse.Namespace) -> tuple[int, int]:
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
        raise JaxstyleError(f"cannot start jax.distributed ({message}); give `coordinator_address`, "
                            "`num_processes` and `process_id`, or run under SLURM, Open MPI or on a TPU pod") from e
    return jax.process_index(), jax.process_count()


def _buckets(run: _Batch, todo: Sequence[int]) -> dict[tuple[int, int], list[tuple[int, tuple[int, int]]]]:
    """The inputs to do, grouped by the shape they are brought to (`batch_io.bucket_shape`)."""
    config, args = run.inputs.schedule, run.args
    buckets: dict[tuple[int, int], list[tuple[int, tuple[int, int]]]] = {}
    for i in todo:
        try:
            exact = plan.output_shape(images.image_shape(run.contents[i], max_pixels=run.inputs.options.max_pixels),
                                      config.size)
        except JaxstyleError as e:
            run.fail(str(run.contents[i]), str(e))
            continue
        shape = batch_io.bucket_shape(exact, config.size, policy=args.bucket, step=args.bucket_step)
        buckets.setdefault(shape, []).append((i, exact))
    for shape in list(buckets):
        try:
            plan.check_sizes(config, run.inputs.blocks, shape, [s.shape for s in run.inputs.styles])
            chosen = plan_memory(run.inputs, shape, items=min(len(buckets[shape]), args.batch_size))
            say_plan(run.inputs, chosen, shape)
            run.planned[shape] = chosen.config
        except UsageError as e:
            for i, _ in buckets.pop(shape):
                run.fail(str(run.contents[i]), f"{run.contents[i]}: {e}")
    return buckets


def _loaded(run: _Batch, members: list, shape: tuple[int, int], size: int):
    """The bucket's inputs in programs of ``size``: ``[(i, exact, image), ...]``; unreadable ones are skipped."""
    program = []
    for i, exact in members:
        try:
            program.append((i, exact, run.prepared(i, exact, shape)))
        except JaxstyleError as e:
            run.fail(str(run.contents[i]), str(e))
            continue
        if len(program) == size:
            yield program
            program = []
    if program:
        yield program


def _resumed_program(run: _Batch, ckpt: pathlib.Path):
    """The program an interrupted batch was running: ``(items, shape, checkpoint, history)``, images loaded."""
    from jaxstyle import checkpoint

    saved = checkpoint.saved_run(ckpt)
    index = {str(f): i for i, f in enumerate(run.contents)}
    missing = [f for f in saved.get("items", []) if f not in index]
    if missing or not saved.get("items"):
        raise UsageError(f"checkpoint {str(ckpt)!r} holds inputs this batch does not have ({', '.join(missing)}); "
                         "give the same inputs, or pass `overwrite` to start afresh")
    shape = tuple(saved["shape"])
    items = [(index[f], tuple(e), run.prepared(index[f], tuple(e), shape))
             for f, e in zip(saved["items"], saved["exact"])]
    state, history = checkpoint.load(ckpt, run.record([(i, e) for i, e, _ in items], shape), run.inputs.schedule,
                                     shape, items=len(items))
    return items, shape, state, history


def _batch_program(run: _Batch, reporter: report.Reporter, net, lay, items: list, shape: tuple[int, int],
                   size: int, ckpt: pathlib.Path, state=None, history=None) -> None:
    """Run one program of the batch and write its outputs as soon as it is done."""
    from jaxstyle import optimize

    config = run.inputs.config
    if shape not in run.planned:  # a resumed program
        run.planned[shape] = plan_memory(run.inputs, shape, items=len(items)).config
    metadata = {i: run.inputs.metadata(config, run.contents[i].name) for i, _, _ in items}
    sides = {i: outputs.SideFiles(run.outs[i]) for i, _, _ in items}
    reporter.start(report.Program([run.contents[i].name for i, _, _ in items], ckpt,
                                  run.record([(i, e) for i, e, _ in items], shape),
                                  _batch_pictures(run, items, sides, metadata), [s.interrupted for s in sides.values()],
                                  history))
    results = optimize.run([image for _, _, image in items], run.inputs.styles, net,
                           [run.planned[shape]] * len(items), ids=[i for i, _, _ in items], init=run.inputs.init,
                           callback=reporter, report_every=report_every(run.inputs.options), resume=state,
                           layout=lay, size=size)
    for (i, exact, _), result in zip(items, results):
        if isinstance(result, optimize.NonFiniteLoss):
            run.fail(str(run.contents[i]), f"{run.contents[i]}: {result}", reporter)
            continue
        try:
            picture = _uncropped(run, result, exact)
            alpha = output_alpha(run.contents[i], run.inputs.options, exact)  # cropped as the picture was
            alpha = None if alpha is None else batch_io.crop_from(alpha[..., None], picture.shape[:2])[..., 0]
            images.save_image(run.outs[i], picture, overwrite=True, metadata=metadata[i], alpha=alpha,
                              png_bits=run.inputs.options.png_bits)
        except JaxstyleError as e:
            run.fail(str(run.contents[i]), str(e), reporter)
            continue
        run.written += 1
    reporter.finish()


def _uncropped(run: _Batch, result: np.ndarray, exact: tuple[int, int]) -> np.ndarray:
    """A padded bucket's output (at the last scale) cropped back to its input's own shape."""
    full = result.shape[0] >= exact[0] and result.shape[1] >= exact[1]
    return batch_io.crop_from(result, exact) if run.args.bucket == "pad" and full else result


def _batch_pictures(run: _Batch, items: list, sides: dict, metadata: dict):
    """Save every item's picture of a report (``report.Program.save_pictures``)."""
    def save(p, why: str) -> list[pathlib.Path]:
        paths = []
        for j, (i, exact, _) in enumerate(items):
            path = sides[i].snapshot(p.step) if why == "step" else sides[i].interrupted
            picture = _uncropped(run, np.clip(np.asarray(p.images[j]), 0, 1), exact)
            images.save_image(path, picture, overwrite=True, metadata={**metadata[i], "step": str(p.step)},
                              png_bits=run.inputs.options.png_bits)
            paths.append(path)
        return paths

    return save


def note(message: str) -> None:
    """One line on stderr, the command line's way (settings named as flags)."""
    print(f"jaxstyle: {as_flags(message)}", file=sys.stderr)


# ----------------------------------------------------------------------------
# sweep


def sweep(args: argparse.Namespace, config: StylizeConfig, options: RunOptions, grid: dict[str, list]) -> int:
    """``jaxstyle sweep``: one content image for every point of a grid of settings, as one program."""
    for name in ("batch_size", "columns"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"`{name}` must be at least 1, got {getattr(args, name)}")
    content_path, outdir = pathlib.Path(args.content), outputs.check_output_dir(args.output_dir)
    inputs = read_inputs(args, config, options, [("the content image", content_path)])
    plan.check_grid(config, grid, init_image=inputs.init is not None)
    points = plan.grid_points(grid)
    paths, sheet = _sweep_paths(content_path.stem, points, outdir, args.ext)
    columns = args.columns or len(list(grid.values())[-1])
    side = outputs.check_output(sheet, inputs.by_path, overwrite=options.overwrite, what="the contact sheet")
    for path in paths:  # a resumed sweep finds the points it wrote before the interruption
        outputs.check_output(path, inputs.by_path, overwrite=options.overwrite or options.resume)
    outputs.check_log(options.log, inputs.by_path, [*paths, sheet])
    resume = checkpoint_state(side.checkpoint, options)
    content = inputs.load(content_path)
    plan.check_sizes(inputs.schedule, inputs.blocks, content.shape, [s.shape for s in inputs.styles])
    chosen = plan_memory(inputs, content.shape, items=plan.program_size(len(points), args.batch_size))
    say_plan(inputs, chosen, content.shape)
    planned = chosen.config
    from jaxstyle import batch as batches, checkpoint  # JAX has started: after the checks

    net, lay = network(inputs), layout(options, many=True)
    programs = plan.programs(len(points), args.batch_size, lay.devices)

    def record(start: int) -> dict:
        return checkpoint.run_record(config, inputs.files, inputs.meta["params_sha256"], output=sheet.name,
                                     grid=grid, start=start)

    start, state, history = 0, None, None
    if resume:
        start = int(checkpoint.saved_run(side.checkpoint).get("start", 0))
        program = next((p for p in programs if p.start == start), range(0))
        state, history = checkpoint.load(side.checkpoint, record(start), planned, content.shape, items=len(program))
    tiles = {i: inputs.load(paths[i]) for i in range(start)}  # the points finished before an interruption
    reporter = report.Reporter(options, plan.total_steps(planned) * (len(points) - start),
                               0 if history is None else history.size, command="sweep")
    metadata = inputs.metadata(config, content_path.name)
    results = batches.sweep_iter(content, inputs.styles, net, planned, grid=grid, init=inputs.init,
                                 masks=inputs.masks, batch_size=args.batch_size, layout=lay, callback=reporter,
                                 start=start, resume=state)
    with reporter.running(planned, lambda: f"; {len(tiles)} of {len(points)} points written"):
        for program in (p for p in programs if p.start >= start):
            labels = [batch_io.sweep_label(points[i]) for i in program]
            reporter.start(report.Program(labels, side.checkpoint, record(program.start),
                                          _sheet_saver(side, labels, metadata, columns),
                                          [side.interrupted], history if program.start == start else None))
            done = next(results)
            for i, result in zip(done.items, done.images):
                tiles[i] = _sweep_point(reporter, paths[i], points[i], result, config, metadata)
            reporter.finish()
    failed = _write_sheet(sheet, [tiles[i] for i in range(len(points))], points, columns, metadata)
    reporter.write_log(single=False)
    if not options.quiet:
        note(f"wrote {len(points) - failed} images and the contact sheet {sheet}")
    return 1 if failed else 0


def _write_sheet(sheet: pathlib.Path, tiles: list, points: list[dict], columns: int, metadata: dict) -> int:
    """The contact sheet of every point (the last finite picture of a failed one); returns how many failed."""
    failed = [isinstance(t, _Failed) for t in tiles]
    labels = [batch_io.sweep_label(p) + ("\n(NaN: last finite)" if f else "") for p, f in zip(points, failed)]
    pictures = [t.image if f else t for t, f in zip(tiles, failed)]
    images.save_image(sheet, batch_io.contact_sheet(pictures, labels, columns=columns), overwrite=True,
                      metadata=metadata)
    return sum(failed)


def _sweep_paths(stem: str, points: list[dict], outdir: pathlib.Path, ext: str):
    """Each point's output and the contact sheet; refuses values that would share a file name."""
    paths = [outdir / batch_io.sweep_name(stem, point, ext) for point in points]
    if len(set(paths)) != len(paths):
        raise UsageError("two sweep values print the same in file names (e.g. 0.1234567 and 0.1234568); "
                         "give values that differ in their first 6 significant digits")
    return paths, outdir / f"{stem}__sheet{ext}"


@dataclasses.dataclass
class _Failed:
    image: np.ndarray  # the last finite picture of a point whose loss became NaN or Inf


def _sweep_point(reporter: report.Reporter, path: pathlib.Path, point: dict, result, config: StylizeConfig,
                 metadata: dict[str, str]):
    """Write one finished point; a point whose loss became NaN or Inf is reported (its tile: the last finite)."""
    if isinstance(result, Exception):
        reporter.note(f"error: {batch_io.sweep_label(point).replace(chr(10), ', ')}: {result}")
        return _Failed(np.clip(result.image, 0, 1))
    config = config.replace(**point)
    images.save_image(path, result, overwrite=True, png_bits=reporter.options.png_bits, metadata={
        **metadata, "settings": json.dumps(dataclasses.asdict(config)), "seed": str(config.seed)})
    return result


def _sheet_saver(side: outputs.SideFiles, labels: list[str], metadata: dict[str, str], columns: int):
    """Save a sweep program's pictures as a contact sheet (``report.Program.save_pictures``)."""
    def save(p, why: str) -> list[pathlib.Path]:
        path = side.snapshot(p.step) if why == "step" else side.interrupted
        tiles = [np.clip(np.asarray(p.images[j]), 0, 1) for j in range(len(p.items))]
        images.save_image(path, batch_io.contact_sheet(tiles, labels, columns=columns), overwrite=True,
                          metadata={**metadata, "step": str(p.step)})
        return [path]

    return save
