"""What a command writes, planned and checked before any compute, so that no run destroys anything.

The rules, for every command:

- **Side files belong to one output.** Everything a run writes beside an
  output ``OUT`` is named after its full name: for ``out/a.png``,
  ``out/a.png.checkpoint.npz``, ``out/a.png.interrupted.png``,
  ``out/a.png.last-finite.png`` and ``out/a.png.step00100.png``
  (`SideFiles`). Two outputs (``a.png`` and ``a.jpg``) never share one, and
  ``--overwrite`` of one never touches another's.
- **An output is never an input.** No output, side file or log may be a
  content, style, mask or init image (`check_not_inputs`), compared by their
  resolved paths, so a symbolic link to an input is caught too.
- **Every path is writable before the first step** (`check_output`, `check_log`).
- **A batch takes only content.** Style images, masks and the init image
  found among the inputs are not stylized, and a file the run would write is
  never one of its inputs: an input at another input's output path that
  jaxstyle wrote (its metadata says so) is an earlier output and is left
  out; any other such input is refused (`plan_batch`).

This module imports no JAX: the command line runs it before JAX starts.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Mapping, Sequence

from jaxstyle import images
from jaxstyle.config import LOG_EXTENSIONS
from jaxstyle.errors import JaxstyleError, UsageError


@dataclasses.dataclass(frozen=True)
class SideFiles:
    """The files a run may write beside its output ``output`` (see the module docs)."""

    output: pathlib.Path

    def _beside(self, suffix: str) -> pathlib.Path:
        return self.output.with_name(self.output.name + suffix)

    @property
    def checkpoint(self) -> pathlib.Path:
        """The unfinished run, for ``--resume``: ``OUT.checkpoint.npz``."""
        return self._beside(".checkpoint.npz")

    @property
    def interrupted(self) -> pathlib.Path:
        """The picture when the run was interrupted: ``OUT.interrupted.png``."""
        return self._beside(".interrupted.png")

    @property
    def last_finite(self) -> pathlib.Path:
        """The last picture with a finite loss, when the loss became NaN or Inf: ``OUT.last-finite.png``."""
        return self._beside(".last-finite.png")

    def snapshot(self, step: int) -> pathlib.Path:
        """The picture at ``step`` (``--save-every``): ``OUT.step00100.png``."""
        return self._beside(f".step{step:05d}.png")

    def all_fixed(self) -> tuple[pathlib.Path, ...]:
        """The side files whose names do not depend on the step."""
        return self.checkpoint, self.interrupted, self.last_finite


def resolved(path: str | os.PathLike) -> pathlib.Path:
    """The absolute path with every symbolic link followed (as far as the path exists)."""
    return pathlib.Path(os.path.realpath(os.path.abspath(path)))


def inputs_by_path(inputs: Sequence[tuple[str, str | os.PathLike]]) -> dict[pathlib.Path, str]:
    """Resolved path -> role ("the content image", "style image 2", ...) of every input file."""
    return {resolved(path): role for role, path in reversed(list(inputs))}


def check_not_inputs(paths: Sequence[tuple[str, str | os.PathLike]], inputs: Mapping[pathlib.Path, str]) -> None:
    """Refuse a path a run would write that is one of its inputs.

    Args:
      paths: ``(what, path)`` pairs, e.g. ``("the output", "out.png")``.
      inputs: `inputs_by_path` of the run.
    Raises:
      UsageError: naming the path and the input it would replace.
    """
    for what, path in paths:
        role = inputs.get(resolved(path))
        if role is not None:
            raise UsageError(f"{what} {str(path)!r} is {role}; writing it would destroy that input: "
                             "choose another output path")


def check_output(output: str | os.PathLike, inputs: Mapping[pathlib.Path, str], *, overwrite: bool,
                 what: str = "the output") -> SideFiles:
    """Check an output file and its side files before any compute; return the side files.

    Raises:
      UsageError: the output exists (without ``overwrite``), cannot be written,
        or it or a side file is an input.
    """
    output = pathlib.Path(output)
    images.check_writable(output, overwrite=overwrite)
    side = SideFiles(output)
    check_not_inputs([(what, output), *((f"{what}'s side file", p) for p in side.all_fixed())], inputs)
    return side


def check_log(log: str, inputs: Mapping[pathlib.Path, str], outputs: Sequence[pathlib.Path]) -> None:
    """Check the loss log's path before any compute: a writable file that is neither an input nor an output."""
    if not log:
        return
    path = pathlib.Path(log)
    if not path.name.lower().endswith(LOG_EXTENSIONS) or path.name.lower() in LOG_EXTENSIONS:
        raise UsageError(f"`log` must be a file name ending in {' or '.join(LOG_EXTENSIONS)}, got {log!r}")
    check_not_inputs([("the log", path)], inputs)
    if resolved(path) in {resolved(o) for o in outputs}:
        raise UsageError(f"the log {log!r} is also an output; give it another name")
    if path.is_dir():
        raise UsageError(f"the log {log!r} is a directory; give a file name")
    images.check_directory_writable(path, "the log")


def check_output_dir(outdir: str | os.PathLike) -> pathlib.Path:
    """An output folder that exists as a folder or can be created, and accepts files."""
    outdir = pathlib.Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"the output folder {str(outdir)!r} is a file; give a folder (it is created if missing)")
    images.check_directory_writable(outdir / "x", "the output folder")
    return outdir


def plan_batch(files: Sequence[pathlib.Path], outdir: pathlib.Path, extension: str,
               inputs: Mapping[pathlib.Path, str]) -> tuple[list[pathlib.Path], list[pathlib.Path], list[str]]:
    """The contents of a batch and their outputs, so that no input is ever written over.

    Args:
      files: the expanded inputs (`batch_io.expand_inputs`).
      outdir: the output folder; extension: the outputs' extension.
      inputs: `inputs_by_path` of the style images, masks and init image.
    Returns:
      ``(contents, outputs, notes)``: the files to stylize, their outputs
      (``outdir / (stem + extension)``), and one line for each input left out.
    Raises:
      UsageError: an output would replace a style, mask or init image, or an
        input that jaxstyle did not write; or two inputs share an output name.
    """
    notes, contents = [], []
    for f in files:
        role = inputs.get(resolved(f))
        if role is None:
            contents.append(f)
        else:
            notes.append(f"{str(f)!r} is {role}, not a content image; left out")
    outputs = [outdir / (f.stem + extension) for f in contents]
    writers: dict[pathlib.Path, list[pathlib.Path]] = {}  # resolved output -> the inputs that write it
    for f, o in zip(contents, outputs):
        writers.setdefault(resolved(o), []).append(resolved(f))
    earlier = {resolved(f) for f in contents
               if any(g != resolved(f) for g in writers.get(resolved(f), [])) and _written_by_jaxstyle(f)}
    kept = [(f, o) for f, o in zip(contents, outputs) if resolved(f) not in earlier]
    notes += [f"{str(f)!r} is an earlier output of this batch, not a content image; left out"
              for f in contents if resolved(f) in earlier]
    check_not_inputs([(f"the output of {str(f)!r}", o) for f, o in kept],
                     {**inputs, **{resolved(f): f"the content image {str(f)!r}" for f, _ in kept}})
    seen: dict[pathlib.Path, pathlib.Path] = {}
    for f, o in kept:
        if resolved(o) in seen:
            raise UsageError(f"inputs {str(seen[resolved(o)])!r} and {str(f)!r} would both be written to {str(o)!r}; "
                             "rename one or run them separately")
        seen[resolved(o)] = f
    return [f for f, _ in kept], [o for _, o in kept], notes


def summary(inputs: int, written: int, done: int, failed: Sequence[str], seconds: float | None = None) -> str:
    """A folder run's closing line: its inputs, and how many were written, skipped as done and failed (named)."""
    took = "" if seconds is None else f" in {seconds:.1f} s"
    return (f"{inputs} input{'s' * (inputs != 1)}: {written} written{took}, {done} already done (skipped), "
            f"{len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))


def _written_by_jaxstyle(path: pathlib.Path) -> bool:
    """Whether an image file carries the metadata jaxstyle writes into its outputs."""
    try:
        return "jaxstyle" in images.read_metadata(path)
    except JaxstyleError:
        return False
