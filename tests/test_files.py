"""Atomic writes under signals: whatever line a signal's exception comes at, the writer leaves no temporary
file behind, and the target holds its old bytes or its new ones, whole.

A signal handler that raises (`report.signals_end_runs`) raises between any two lines of Python that run,
in the writer or in a library it calls. The tests raise `KeyboardInterrupt` from a trace function at the
first line, then at the second, and so on until the write runs to its end first.
"""

import os
import sys
from fractions import Fraction

import numpy as np
import pytest

from jaxstyle import images, video_io
from jaxstyle._files import atomic_write_bytes


class _InterruptAt:
    """A `sys.settrace` function that counts the lines run and raises `KeyboardInterrupt` at line ``at``
    (once: an exception in a trace function turns tracing off, as the run's handler ignores later signals)."""

    def __init__(self, at: float):
        self.at, self.lines = at, 0

    def __call__(self, frame, event, arg):
        if event == "line":
            self.lines += 1
            if self.lines == self.at:
                raise KeyboardInterrupt
        return self


def _traced(write, at: float) -> tuple[int, bool]:
    """Run ``write()`` raising at its line ``at``: (lines counted, whether the interrupt came)."""
    tracer = _InterruptAt(at)
    sys.settrace(tracer)
    try:
        write()
    except Exception:  # a library's own cleanup can fail on the interrupt and raise in its place
        assert tracer.lines >= at
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
    return tracer.lines, tracer.lines >= at


def _each_line(tmp_path, write, check, setup=lambda folder: None):
    """Interrupt ``write(folder)`` at its first line, then its second, ..., until it finishes first, each time
    in a fresh folder holding a file "old" and what ``setup(folder)`` makes; ``check(folder)`` after each."""
    (tmp_path / "first").mkdir()
    setup(tmp_path / "first")
    write(tmp_path / "first")  # its imports, uninterrupted: a module interrupted half-way stays half made
    at = 0
    while True:
        at += 1
        folder = tmp_path / f"at{at}"
        folder.mkdir()
        (folder / "old").write_bytes(b"old")
        setup(folder)
        lines, interrupted = _traced(lambda: write(folder), at)
        check(folder)
        if not interrupted:
            break
    assert at > 10 and lines < at  # the trace saw the writer's lines, and the last write ran to its end


def test_an_atomic_write_interrupted_at_any_line_leaves_the_old_file_or_the_new_one(tmp_path):
    new = bytes(range(256)) * 4

    def check(folder):
        names = {p.name for p in folder.iterdir()}
        assert names <= {"old", "out"} and "old" in names, names  # no temporary file
        assert (folder / "old").read_bytes() == b"old"
        assert not (folder / "out").exists() or (folder / "out").read_bytes() == new

    _each_line(tmp_path, lambda folder: atomic_write_bytes(folder / "out", new), check)
    atomic_write_bytes(tmp_path / "whole", new)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "whole").stat().st_mode & 0o777 == 0o666 & ~umask  # the mode of any new file


def _unnamed_files_work(folder) -> bool:
    try:
        os.close(os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600))
        return True
    except (AttributeError, OSError):
        return False


def test_a_folder_check_interrupted_at_any_line_leaves_nothing(tmp_path):
    if not _unnamed_files_work(tmp_path):  # the check falls back on a named file, removed a few lines later
        pytest.skip("this file system makes no unnamed files (O_TMPFILE)")

    def check(folder):
        assert {p.name for p in folder.iterdir()} == {"old"}

    _each_line(tmp_path, lambda folder: images.check_directory_writable(folder / "out.png", "the output"), check)


def test_a_clip_interrupted_at_any_line_leaves_no_temporary_file(tmp_path):
    frames = [np.full((4, 6, 3), v, np.float32) for v in (0.2, 0.8)]

    def check(folder):
        names = {p.name for p in folder.iterdir()}
        assert names <= {"old", "out.gif"}, names

    _each_line(tmp_path, lambda folder: video_io.write_clip(folder / "out.gif", frames, Fraction(10)), check)


def test_a_folder_of_frames_interrupted_at_any_line_is_the_old_one_or_the_new_one(tmp_path):
    # Values exact in 8 bits, on the smallest frames a clip may have.
    old, new = [np.ones((16, 16, 3), np.float32)], [np.full((16, 16, 3), v, np.float32) for v in (0.0, 1.0)]

    def check(folder):
        assert {p.name for p in folder.iterdir()} == {"old", "out"}
        clip = video_io.read_clip(folder / "out").frames
        assert len(clip) in (1, 2) and np.array_equal(clip, old if len(clip) == 1 else new)

    _each_line(tmp_path, lambda folder: video_io.write_clip(folder / "out", new, Fraction(10), overwrite=True),
               check, setup=lambda folder: video_io.write_clip(folder / "out", old, Fraction(10)))
