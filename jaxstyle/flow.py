"""Optical flow between the neighbouring frames of a clip, computed once and kept beside the output.

The flow comes from OpenCV's DIS (dense inverse search, Kroeger et al., ECCV
2016), an optional dependency (``pip install 'jaxstyle[video]'``): its
medium preset is accurate to a few hundredths of a pixel on textured images
and takes about 12 ms per pair of 512 px frames on one core, while
Farneback's method was off by more than a pixel on 19 % of the bundled photo,
where it is smooth. Where a clip has smooth regions, medium's errors of half a
pixel make the forward-backward check (`temporal.reliable`) distrust 12 % of
the pixels, which then flicker; the default, ``"fine"`` (`FINE`), is four
times as accurate there for 50 ms a 256 px pair, still nothing beside a
frame's optimisation. The
flows follow `jaxstyle.temporal`'s convention: ``flow(a -> b)[y, x]`` is the
(dx, dy) that carries the content at (y, x) in frame a to frame b.

A clip's flows are written to a ``.npz`` file with a fingerprint of the frames
and of the method (`cached_clip_flows`), so a resumed run reads them back
instead of computing them again.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Sequence

import numpy as np

from jaxstyle import images
from jaxstyle._files import atomic_write_npz
from jaxstyle.errors import JaxstyleError

PRESETS = ("ultrafast", "fast", "medium", "fine")
# "fine": OpenCV's medium preset down to the finest scale, with patches every 2 px, more gradient
# descent and variational refinement, and a smoother refinement. On scripts/make_clip.py's clip at
# 256 px (true flow known): median end-point error 0.033 px against medium's 0.14, and 3 % of the
# visible pixels failing the forward-backward check against 12 %, at 53 ms a pair against 3 ms.
FINE = {"FinestScale": 0, "PatchSize": 8, "PatchStride": 2, "GradientDescentIterations": 25,
        "VariationalRefinementIterations": 10, "VariationalRefinementAlpha": 40.0}


def _cv2():
    try:
        import cv2
    except ImportError:
        raise JaxstyleError("optical flow needs OpenCV: pip install 'jaxstyle[video]'") from None
    return cv2


def _gray(frame: np.ndarray) -> np.ndarray:
    """An RGB frame in [0, 1] as the 8-bit grey image DIS takes (ITU-R BT.601 luma, as OpenCV's)."""
    cv2 = _cv2()
    return cv2.cvtColor(np.ascontiguousarray(images.to_8bit(frame)), cv2.COLOR_RGB2GRAY)


def optical_flow(a: np.ndarray, b: np.ndarray, preset: str = "fine") -> np.ndarray:
    """flow(a -> b) of two RGB frames in [0, 1] of one shape (h, w, 3): float32 (h, w, 2) of (dx, dy)."""
    return _flows([_gray(a), _gray(b)], [(0, 1)], preset)[0]


def clip_flows(frames: Sequence[np.ndarray], preset: str = "fine") -> tuple[np.ndarray, np.ndarray]:
    """The flows between neighbouring frames, both ways.

    Returns:
      ``(forward, backward)``, each float32 (n - 1, h, w, 2): ``forward[i]`` is
      flow(i -> i + 1) on frame i's grid, ``backward[i]`` flow(i + 1 -> i) on
      frame i + 1's grid (what `temporal.warp` needs to carry frame i to i + 1).
    """
    grays = [_gray(f) for f in frames]
    forward = _flows(grays, [(i, i + 1) for i in range(len(grays) - 1)], preset)
    backward = _flows(grays, [(i + 1, i) for i in range(len(grays) - 1)], preset)
    empty = np.zeros((0, *grays[0].shape, 2), np.float32)  # a clip of one frame has no flows
    return (np.stack(forward) if forward else empty), (np.stack(backward) if backward else empty)


def _flows(grays: list[np.ndarray], pairs: list[tuple[int, int]], preset: str) -> list[np.ndarray]:
    cv2 = _cv2()
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{'MEDIUM' if preset == 'fine' else preset.upper()}"))
    for name, value in (FINE.items() if preset == "fine" else ()):
        getattr(dis, f"set{name}")(value)
    return [dis.calc(grays[i], grays[j], None).astype(np.float32) for i, j in pairs]


def fingerprint(frames: Sequence[np.ndarray], preset: str) -> str:
    """What a clip's flows depend on: the frames' pixels and shapes, the preset and OpenCV's version."""
    settings = FINE if preset == "fine" else ""
    digest = hashlib.sha256(f"{preset} {settings} {_cv2().__version__} {len(frames)}".encode())
    for frame in frames:
        digest.update(str(np.shape(frame)).encode())
        digest.update(np.ascontiguousarray(frame, np.float32).tobytes())
    return digest.hexdigest()


def cached_clip_flows(path: str | os.PathLike, frames: Sequence[np.ndarray],
                      preset: str = "fine") -> tuple[np.ndarray, np.ndarray]:
    """`clip_flows`, read from ``path`` when it holds the flows of these very frames, else computed and
    written there (atomically). A file that cannot be read, or belongs to other frames, is replaced."""
    path = pathlib.Path(path)
    key = fingerprint(frames, preset)
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["fingerprint"]) == key:
                return saved["forward"], saved["backward"]
    except (OSError, KeyError, ValueError):
        pass  # missing, damaged or not ours: compute
    forward, backward = clip_flows(frames, preset)
    try:
        atomic_write_npz(path, forward=forward, backward=backward, fingerprint=np.array(key))
    except OSError as e:
        raise JaxstyleError(f"cannot write the optical flow cache {str(path)!r}: {e.strerror or e}") from e
    return forward, backward
