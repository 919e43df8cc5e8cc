"""Clips in and out: video files, GIFs and folders of frames as lists of RGB arrays in [0, 1].

Video files go through PyAV (the ``video`` extra), which carries its own
FFmpeg libraries in its wheel: decoding runs in-process, frame rates stay
exact fractions (30000/1001), a phone's rotation tag is applied, and the
source's sound is copied into the output without re-encoding. GIFs go through
Pillow, and a folder (or glob) of frames through `jaxstyle.images`.

Outputs are written whole or not at all: a video or GIF is encoded into a
temporary file beside the output and renamed over it; a folder of frames is
written into a hidden folder beside ``OUT`` and renamed to ``OUT`` when every frame is there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import pathlib
import shutil
from fractions import Fraction
from typing import Sequence

import numpy as np
from PIL import Image, ImageSequence

from jaxstyle import images
from jaxstyle._files import temporary_beside, write_beside
from jaxstyle.config import DEFAULT_MAX_PIXELS
from jaxstyle.errors import JaxstyleError, UsageError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".m4v", ".webm", ".avi")
WRITABLE_VIDEO = (".mp4", ".mov", ".mkv", ".m4v")  # H.264 in these containers
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
DEFAULT_FPS = Fraction(25)  # a folder of frames says no rate
CRF = 18  # x264's constant rate factor: visually lossless for most footage


@dataclasses.dataclass
class Clip:
    """Frames of one size, float32 (h, w, 3) RGB in [0, 1], their rate, and where their sound is (if any)."""

    frames: list[np.ndarray]
    fps: Fraction
    audio: pathlib.Path | None = None
    names: list[str] = dataclasses.field(default_factory=list)  # a folder's frame names


def _av():
    try:
        import av
    except ImportError:
        raise JaxstyleError("video files need PyAV: pip install 'jaxstyle[video]'") from None
    av.logging.set_level(av.logging.ERROR)  # kept for the error messages (`last error log`)...
    quiet = logging.getLogger("libav")  # ...which are not printed besides: an error is one line
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    return av


def source_files(source: str | os.PathLike) -> list[pathlib.Path]:
    """The files `read_clip` reads for ``source``: the video or GIF itself, or the frames of a folder or
    glob in name order (none if there are none)."""
    text, path = str(source), pathlib.Path(source)
    if any(c in text for c in "*?[") and not path.exists():
        return sorted(pathlib.Path(p) for p in glob.glob(text) if pathlib.Path(p).suffix.lower() in FRAME_EXTENSIONS)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
    return [path] if path.is_file() else []


def read_clip(source: str | os.PathLike, *, start: int = 0, end: int | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS, size: int | None = None) -> Clip:
    """The frames ``start`` to ``end`` (exclusive; None: the last) of a video file, a GIF, or a folder or
    glob of image files (in name order).

    Args:
      size: bring each frame to this longest side as it is read (Lanczos), so that a long clip takes
        the memory of its frames at that size only; None: as they are.

    Raises:
      UsageError: the source is missing, unreadable, empty in that range, or its frames differ in size.
    """
    text = str(source)
    path = pathlib.Path(source)
    frames = _Frames(text, start, size)
    if (any(c in text for c in "*?[") and not path.exists()) or path.is_dir():
        clip = _read_frames(source_files(source), frames, max_pixels, end)
    elif not path.is_file():
        raise UsageError(f"video {text!r} does not exist")
    elif path.suffix.lower() == ".gif":
        clip = _read_gif(path, frames, end)
    else:
        clip = _read_video(path, frames, end)
    if not clip.frames:
        raise UsageError(f"{text!r} has no frames from {start} to {'the end' if end is None else end}")
    return clip


class _Frames:
    """The frames as they are read: all of the first one's size, each brought to ``size`` at once."""

    def __init__(self, text: str, start: int, size: int | None):
        self.text, self.start, self.size = text, start, size
        self.frames: list[np.ndarray] = []
        self.first: tuple[int, ...] | None = None

    def add(self, frame: np.ndarray, name: str = "") -> None:
        if self.first is None:
            self.first = frame.shape
        elif frame.shape != self.first:
            what = name or f"frame {self.start + len(self.frames)}"
            raise UsageError(f"{what} of {self.text!r} is {frame.shape[1]}x{frame.shape[0]}, the first frame "
                             f"{self.first[1]}x{self.first[0]}; give frames of one size")
        if self.size is not None:
            from jaxstyle.plan import output_shape

            shape = output_shape(frame.shape, self.size)
            frame = frame if frame.shape[:2] == shape else images.resize_to(frame, shape)
        self.frames.append(np.ascontiguousarray(frame, np.float32))


def _read_frames(files: list[pathlib.Path], frames: _Frames, max_pixels: int, end: int | None) -> Clip:
    if not files:
        raise UsageError(f"{frames.text!r} holds no image files ({', '.join(FRAME_EXTENSIONS)})")
    chosen = files[frames.start:end]
    for p in chosen:
        frames.add(images.load_image(p, max_pixels=max_pixels), p.name)
    return Clip(frames.frames, DEFAULT_FPS, names=[p.name for p in chosen])


def _read_gif(path: pathlib.Path, frames: _Frames, end: int | None) -> Clip:
    try:
        with Image.open(path) as im:
            durations = []
            for i, frame in enumerate(ImageSequence.Iterator(im)):
                if end is not None and i >= end:
                    break
                durations.append(frame.info.get("duration", 100) or 100)
                if i >= frames.start:
                    frames.add(np.asarray(frame.convert("RGB"), np.float32) / 255)
    except (OSError, ValueError, SyntaxError) as e:
        raise UsageError(f"cannot read GIF {str(path)!r}: {e}") from e
    fps = Fraction(1000) / Fraction(int(np.median(durations))) if durations else DEFAULT_FPS
    return Clip(frames.frames, fps)


def _read_video(path: pathlib.Path, frames: _Frames, end: int | None) -> Clip:
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UsageError(f"{str(path)!r} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = stream.average_rate or stream.guessed_rate or DEFAULT_FPS
            for i, frame in enumerate(container.decode(stream)):
                if end is not None and i >= end:
                    break
                if i >= frames.start:
                    pixels = frame.to_ndarray(format="rgb24")
                    frames.add(np.rot90(pixels, (frame.rotation or 0) // 90).astype(np.float32) / 255)
            audio = path if container.streams.audio else None
    except av.error.FFmpegError as e:
        raise UsageError(f"cannot read video {str(path)!r}: {e}") from e
    return Clip(frames.frames, Fraction(fps), audio)


def check_output(path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """What ``path`` will be: "video", "gif" or "frames" (a folder); refuses a format that cannot be written
    and an existing output unless ``overwrite``."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    kind = "gif" if suffix == ".gif" else "video" if suffix in WRITABLE_VIDEO else "frames" if not suffix else None
    if kind is None:
        raise UsageError(f"cannot write a clip as {str(path)!r}: use a video file "
                         f"({', '.join(WRITABLE_VIDEO)}), a .gif, or a folder name without an extension")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UsageError(f"{str(path)!r} already exists; pass `overwrite` to replace it")
    return kind


def write_clip(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: Fraction, *,
               audio: pathlib.Path | None = None, overwrite: bool = False) -> None:
    """Write frames (h, w, 3) in [0, 1] as a video (H.264, the sound of ``audio`` copied up to the
    last frame), a GIF, or a folder of PNG frames (``frame00001.png``, ...), all or nothing.

    H.264 in 4:2:0 needs even sides: a video drops an odd last row or column (a GIF or a folder keeps
    every pixel).
    """
    path = pathlib.Path(path)
    kind = check_output(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "frames":
        _write_frames(path, frames)
        return
    if kind == "gif":
        write_beside(path, lambda temp: _write_gif(temp, frames, fps), path.suffix)
    else:
        write_beside(path, lambda temp: _write_video(temp, frames, fps, audio), path.suffix)


def _write_frames(path: pathlib.Path, frames: Sequence[np.ndarray]) -> None:
    """Write the frames into a hidden folder beside ``path``, which takes ``path``'s place when every frame is
    there; an exception at any moment (a signal's) leaves ``path`` as it was, or the new frames."""
    partial, old = temporary_beside(path, ".partial"), temporary_beside(path, ".old")
    try:
        for i, frame in enumerate(frames, 1):
            images.save_image(partial / f"frame{i:05d}.png", frame)
        if path.exists() or path.is_symlink():
            os.replace(path, old)
        os.replace(partial, path)
        _remove(old)
    except BaseException:
        if not (path.exists() or path.is_symlink()) and (old.exists() or old.is_symlink()):
            os.replace(old, path)
        _remove(partial)
        _remove(old)
        raise


def _remove(path: pathlib.Path) -> None:
    """Remove a folder with what it holds, or a file, if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _write_gif(path: pathlib.Path, frames: Sequence[np.ndarray], fps: Fraction) -> None:
    pictures = [Image.fromarray(images.to_8bit(f)) for f in frames]
    pictures[0].save(path, "GIF", save_all=True, append_images=pictures[1:], loop=0,
                     duration=max(20, round(1000 / fps)))  # browsers slow delays under 20 ms down


def _write_video(path: pathlib.Path, frames: Sequence[np.ndarray], fps: Fraction, audio: pathlib.Path | None):
    av = _av()
    h, w = (s - s % 2 for s in frames[0].shape[:2])
    if not (h and w):
        raise UsageError(f"a video needs frames of at least 2x2 pixels, got {frames[0].shape[1]}x{frames[0].shape[0]}")
    fps = Fraction(fps).limit_denominator(100_000)
    try:
        with av.open(str(path), "w") as out, contextlib.ExitStack() as stack:
            stream = out.add_stream("libx264", rate=fps, options={"crf": str(CRF)})
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            src = None if audio is None else stack.enter_context(av.open(str(audio)))
            sound = src.streams.audio[0] if src is not None and src.streams.audio else None
            copy = None if sound is None else out.add_stream_from_template(sound)  # before the first packet
            for i, frame in enumerate(frames):
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(images.to_8bit(frame)[:h, :w]), format="rgb24")
                picture.pts, picture.time_base = i, 1 / fps
                out.mux(stream.encode(picture))
            out.mux(stream.encode())  # flush the encoder
            if sound is not None:
                _copy_packets(src, sound, out, copy, len(frames) / fps)
    except av.error.FFmpegError as e:
        raise JaxstyleError(f"cannot encode {str(path)!r}: {e}") from e


def _copy_packets(src, sound, out, copy, seconds: Fraction) -> None:
    """Copy the packets of stream ``sound`` into ``copy`` without re-encoding, up to ``seconds``."""
    for packet in src.demux(sound):
        if packet.dts is None:
            continue  # the demuxer's final empty packet
        if packet.pts is not None and packet.pts * packet.time_base >= seconds:
            break
        packet.stream = copy
        out.mux(packet)
