"""``jaxstyle video``: a clip painted frame to frame consistently, from file to file.

The command works as the others do (`jaxstyle.commands`): it checks every
option and path and reads the clip before JAX starts, plans the memory,
then runs the programs of `jaxstyle.video` one by one with a
`report.Reporter` as their callback, and writes the output last.

Everything an unfinished run keeps is in one folder beside the output,
``OUT.unfinished/``:

- ``flows.npz``: the optical flows between neighbouring frames (`flow.cached_clip_flows`);
- ``run.json``: what identifies the run (settings, style images, weights, the frames' fingerprint);
- ``frame00001.npy``, ...: the finished stylized frames, float32, exact;
- ``window.npz``: the multipass mode's current window after its last finished pass;
- ``checkpoint.npz``: the program in progress (`checkpoint`), saved every
  ``checkpoint_every`` steps and when a signal ends the run.

``--resume`` continues from there: finished frames are read back, not painted
again, and the result equals that of an uninterrupted run. The folder is
removed once the output is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import pathlib
import shutil
import time
from typing import Sequence

import numpy as np

from jaxstyle import commands, outputs, plan, report, video_io
from jaxstyle._files import atomic_write_bytes, atomic_write_npz
from jaxstyle.config import RunOptions, StylizeConfig, VideoConfig
from jaxstyle.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Unfinished:
    """The folder of an unfinished run beside the output ``OUT``: ``OUT.unfinished/`` (see the module docs)."""

    folder: pathlib.Path

    @classmethod
    def beside(cls, output: pathlib.Path) -> "Unfinished":
        return cls(output.with_name(output.name + ".unfinished"))

    flows = property(lambda self: self.folder / "flows.npz")
    record = property(lambda self: self.folder / "run.json")
    window = property(lambda self: self.folder / "window.npz")
    checkpoint = property(lambda self: self.folder / "checkpoint.npz")

    def frame(self, i: int) -> pathlib.Path:
        return self.folder / f"frame{i + 1:05d}.npy"


def video(args: argparse.Namespace, config: StylizeConfig, options: RunOptions, settings: VideoConfig) -> int:
    """``jaxstyle video INPUT --style S -o OUT``."""
    source, output = pathlib.Path(args.input), pathlib.Path(args.output)
    start, end = _frame_range(args)
    if options.save_every:
        raise UsageError("`save_every` does not apply to a video: each finished frame is kept in "
                         f"{output.name}.unfinished until the output is written")
    if options.shard_image:
        raise UsageError("`shard_image` does not apply to a video: `--mode multipass` splits a window's frames "
                         "over the devices instead")
    if args.fps is not None and not args.fps > 0:
        raise UsageError(f"`fps` must be positive, got {args.fps:g}")
    inputs = commands.read_inputs(args, config, options, [])
    video_io.check_output(output, overwrite=options.overwrite)
    side = Unfinished.beside(output)
    _check_paths(source, output, side, inputs.by_path)
    outputs.check_log(options.log, inputs.by_path, [output])
    resume = _unfinished_state(side, options)
    clip = video_io.read_clip(source, start=start, end=end, max_pixels=options.max_pixels, size=config.size)
    frames = clip.frames  # at the output size
    plan.check_sizes(inputs.schedule, inputs.blocks, frames[0].shape, [s.shape for s in inputs.styles])
    window = 1 if settings.mode == "sequential" else min(settings.window, len(frames))
    chosen = commands.plan_memory(inputs, frames[0].shape, items=window)  # JAX starts here, after the checks
    planned = chosen.config
    commands.say_plan(inputs, chosen, frames[0].shape)
    from jaxstyle import checkpoint, flow, video as clips

    record = checkpoint.run_record(config, inputs.files, inputs.meta["params_sha256"], output=output.name,
                                   frames=flow.fingerprint(frames, "frames"), video=dataclasses.asdict(settings))
    state = _load_state(side, record, len(frames)) if resume else _new_state(side, record)
    began = time.perf_counter()
    flows = flow.cached_clip_flows(side.flows, frames, settings.flow_preset)
    if not options.quiet:
        commands.note(f"optical flow of {len(frames) - 1} frame pairs ready in {time.perf_counter() - began:.1f} s "
                      f"(kept in {side.flows} until the output is written)")
    pass_steps = [plan.total_steps(c) for c in plan.pass_configs(planned, settings)]
    reporter = report.Reporter(options, sum(pass_steps) * len(frames), _steps_done(state, pass_steps),
                               command="video")
    lay = commands.layout(options, many=settings.mode != "sequential")
    programs = clips.programs(frames, inputs.styles, commands.network(inputs), planned, settings, flows=flows,
                              state=state, layout=lay)
    with reporter.running(planned, lambda: f"; {len(state.done)} of {len(frames)} frames finished",
                          more=dataclasses.asdict(settings)):
        for program in programs:
            _run_program(program, reporter, side, record, frames[0].shape, state, options)
    fps = args.fps or clip.fps
    video_io.write_clip(output, state.done, fps, audio=clip.audio if start == 0 else None,
                        overwrite=options.overwrite)
    shutil.rmtree(side.folder, ignore_errors=True)
    reporter.write_log(single=False)
    if not options.quiet:
        h, w = state.done[0].shape[:2]
        commands.note(f"wrote {output} ({len(state.done)} frames, {w}x{h}, {float(fps):.4g} fps)")
    return 0


def _frame_range(args: argparse.Namespace) -> tuple[int, int | None]:
    """The first frame and the end (exclusive; None: the last) that ``--start``, ``--end`` and ``--frames`` ask for."""
    if args.start < 0:
        raise UsageError(f"`start` must be 0 or more, got {args.start}")
    if args.end is not None and args.frames is not None:
        raise UsageError("give `end` or `frames`, not both")
    if args.frames is not None and args.frames < 1:
        raise UsageError(f"`frames` must be at least 1, got {args.frames}")
    if args.end is not None and args.end <= args.start:
        raise UsageError(f"`end` ({args.end}) must be after `start` ({args.start})")
    return args.start, args.end if args.frames is None else args.start + args.frames


def _check_paths(source: pathlib.Path, output: pathlib.Path, side: Unfinished, inputs: dict) -> None:
    """No output may be, or be a folder above, the clip's files or another input."""
    read = [outputs.resolved(f) for f in video_io.source_files(source)]
    outputs.check_not_inputs([("the output", output), ("the unfinished run's folder", side.folder)],
                             {**inputs, **{f: f"the input {f.name!r}" for f in read}})
    for what, path in (("the output", output), ("the unfinished run's folder", side.folder)):
        there = outputs.resolved(path)
        if any(there in f.parents for f in read):
            raise UsageError(f"{what} {str(path)!r} is the folder of the input {str(source)!r}; writing it would "
                             "destroy the input: choose another output path")


def _unfinished_state(side: Unfinished, options: RunOptions) -> bool:
    """Whether to resume; refuses a missing unfinished run with --resume and a left one without."""
    if options.resume and not side.record.is_file():
        raise UsageError(f"`resume`: there is no unfinished run in {str(side.folder)!r} to continue")
    if not options.resume and side.folder.exists():
        if not options.overwrite:
            raise UsageError(f"{str(side.folder)!r} holds an unfinished run; pass `resume` to continue it, "
                             "or `overwrite` to start afresh")
        shutil.rmtree(side.folder)
    return options.resume


def _new_state(side: Unfinished, record: dict):
    from jaxstyle import video as clips

    atomic_write_bytes(side.record, json.dumps(record).encode())
    return clips.ClipState()


def _load_state(side: Unfinished, record: dict, n: int):
    """The finished frames and the window in progress of an unfinished run of this very clip and settings."""
    from jaxstyle import checkpoint, video as clips

    try:
        saved = json.loads(side.record.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {str(side.record)!r} ({e}); pass `overwrite` to start afresh") from None
    differences = checkpoint.differences(saved, record)
    if differences:
        raise UsageError(f"the unfinished run in {str(side.folder)!r} is another run: {'; '.join(differences)}; "
                         "resume with the same clip, settings and inputs, or pass `overwrite` to start afresh")
    state = clips.ClipState()
    while len(state.done) < n and side.frame(len(state.done)).is_file():
        state.done.append(_read_array(side.frame(len(state.done))))
    if side.window.is_file():
        window = _read_array(side.window)
        if int(window["start"]) == len(state.done):
            state.window, state.passes_done = list(window["images"]), int(window["passes"])
    return state


def _read_array(path: pathlib.Path):
    """A finished frame (``.npy``) or the window in progress (``.npz``, read whole), refused in one line if damaged."""
    try:
        with open(path, "rb") as f:
            saved = np.load(f, allow_pickle=False)
            return {k: saved[k] for k in saved.files} if isinstance(saved, np.lib.npyio.NpzFile) else saved
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise UsageError(f"cannot read {str(path)!r} ({e}); pass `overwrite` to start afresh") from None


def _steps_done(state, pass_steps: Sequence[int]) -> int:
    """Frame-steps an unfinished run had finished (the progress bar's start), from each pass's steps."""
    window = 0 if state.window is None else len(state.window) * sum(pass_steps[:state.passes_done])
    return sum(pass_steps) * len(state.done) + window


def _run_program(program, reporter: report.Reporter, side: Unfinished, record: dict, shape: Sequence[int], state,
                 options: RunOptions) -> None:
    """Run one program with the reporter, continuing its checkpoint if it has one; keep what it finished."""
    from jaxstyle import checkpoint

    where = {**record, "program": list(program.items), "pass": program.index}
    resume, history = None, None
    if side.checkpoint.is_file():
        saved = checkpoint.saved_run(side.checkpoint)
        if (saved.get("program"), saved.get("pass")) == (where["program"], where["pass"]):
            resume, history = checkpoint.load(side.checkpoint, where, program.config, shape, items=len(program.items))
        else:
            report.remove(side.checkpoint)  # a finished program's, left by a run that ended before removing it
    names = [f"frame {i + 1}" for i in program.items]
    reporter.start(report.Program(names, side.checkpoint, where, lambda p, why: [], history=history))
    program.run(callback=reporter, resume=resume, report_every=commands.report_every(options))
    if state.window is not None:
        atomic_write_npz(side.window, start=np.int64(program.items[0]), passes=np.int64(state.passes_done),
                         images=np.stack(state.window))
    for i in program.items:  # the frames this program finished (none after a multipass window's early passes)
        if i < len(state.done):
            atomic_write_bytes(side.frame(i), _npy(state.done[i]))
    if state.window is None:
        report.remove(side.window)
    reporter.finish()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, np.float32), allow_pickle=False)
    return buffer.getvalue()
