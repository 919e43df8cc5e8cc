"""Flicker and cost of the video modes on a clip with known motion, and the batched mode on fake devices.

    python scripts/video_bench.py [--frames 12] [--size 256] [--steps 150] [--out /tmp/video_bench]
    python scripts/video_bench.py --devices 4 --frames 8 --size 128 --steps 40   # frames/s of multipass

The clip is `scripts/make_clip.py`'s: a camera moving over a photo and a cat's
head moving across it, whose true flow and occlusions are known. Each mode
paints it with the real VGG19 and the bundled Van Gogh (`jaxstyle.video`):

- ``independent``: every frame alone, one program per frame (the per-frame peer);
- ``sequential``: Ruder et al. 2016, each frame from the previous one warped, with the temporal loss;
- ``sequential3``: the same held to 1, 2 and 4 frames back (``long_term`` 3);
- ``multipass``: Ruder et al. 2018, windows of 8 frames in 4 passes, as one vmapped program.

For each it prints the **warping error**: over every pair of neighbouring
frames, the mean squared difference between the stylized frame and its
stylized predecessor warped by the *true* flow, over the pixels visible in
both (so the method's own DIS flow does not grade itself), averaged over the
pairs; its ratio to the independent frames'; the seconds of optimisation
(the optical flow, computed once, is timed apart); their ratio to the
independent frames'; and the mean style and content terms of the final
frames. It writes every mode's frames to ``--out`` and, with ``--gif``, the
independent and sequential clips side by side as one GIF.

With ``--devices N`` it runs only the multipass mode, in a fresh process whose
CPU has N fake devices (``XLA_FLAGS``), and in one with a single device, and
prints the frames per second of each. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODES = {"independent": dict(mode="independent", window=1), "sequential": dict(mode="sequential"),
         "sequential3": dict(mode="sequential", long_term=3), "multipass": dict(mode="multipass", window=8)}


def _make_clip():
    spec = importlib.util.spec_from_file_location("make_clip", ROOT / "scripts" / "make_clip.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_clip"] = module
    spec.loader.exec_module(module)
    return module


def synthetic(frames: int, size: int):
    """The clip and its ground truth (`make_clip.SyntheticClip`)."""
    from jaxstyle import images

    make_clip = _make_clip()
    background = images.load_image(make_clip.BACKGROUND)
    sprite = make_clip.cat_head(images.load_image(make_clip.CHELSEA))
    return make_clip.synthetic_clip(background, sprite, frames=frames, size=size)


def warping_error(frames, truth) -> float:
    """Mean over neighbouring pairs of the visible pixels' mean squared difference to the warped predecessor."""
    import jax.numpy as jnp

    from jaxstyle import temporal

    errors = []
    for i, (a, b) in enumerate(zip(frames, frames[1:])):
        warped = np.asarray(temporal.warp(jnp.asarray(a), jnp.asarray(truth.backward[i])))
        visible = truth.visible[i][..., None]
        errors.append(float(np.sum(visible * (b - warped) ** 2) / (3 * np.sum(visible))))
    return float(np.mean(errors))


def paint(mode: str, truth, flows, steps: int, layout=None, **settings) -> tuple[list, float, dict]:
    """The clip painted in ``mode``: frames, seconds, and the final style and content terms per frame."""
    from jaxstyle import commands, images, video, weights
    from jaxstyle.config import StylizeConfig, VideoConfig
    from jaxstyle.step import Network

    params, meta = weights.load(None)
    network = Network(weights.model_for(meta), params)
    style = images.load_image(commands.DEMO_STYLE)
    config = StylizeConfig(size=max(truth.frames[0].shape), steps=steps)
    terms: dict[int, dict] = {}

    def keep(p):
        for j, item in enumerate(p.items):
            terms[item] = {k: float(v[j]) for k, v in p.terms.items()}

    start = time.perf_counter()
    frames = video.stylize_clip(truth.frames, [style], network, config, VideoConfig(**MODES[mode], **settings), flows=flows,
                                callback=keep, layout=layout)
    seconds = time.perf_counter() - start
    mean = {k: float(np.mean([t[k] for t in terms.values()])) for k in ("style", "content")}
    return frames, seconds, mean


def side_by_side_gif(path: pathlib.Path, left: list, right: list, fps: float) -> None:
    """Two clips next to each other, 4 px apart, as one GIF."""
    from jaxstyle import video_io

    gap = np.ones((left[0].shape[0], 4, 3), np.float32)
    video_io.write_clip(path, [np.concatenate([a, gap, b], 1) for a, b in zip(left, right)], fps, overwrite=True)


def quality(args) -> None:
    from jaxstyle import flow, images

    truth = synthetic(args.frames, args.size)
    start = time.perf_counter()
    flows = flow.clip_flows(truth.frames)
    flow_seconds = time.perf_counter() - start
    n = len(truth.frames)
    h, w = truth.frames[0].shape[:2]
    print(f"clip: {n} frames of {w}x{h}, {args.steps} steps per frame; optical flow (DIS fine, both ways) "
          f"{flow_seconds:.2f} s; the frames' own warping error {warping_error(truth.frames, truth):.2e}")
    results = {}
    for mode in args.modes.split(","):
        weight = {} if args.temporal_weight is None else {"temporal_weight": args.temporal_weight}
        frames, seconds, terms = paint(mode, truth, flows, args.steps, **weight)
        results[mode] = (warping_error(frames, truth), seconds, terms)
        out = args.out / mode
        out.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(frames):
            images.save_image(out / f"frame{i + 1:05d}.png", f, overwrite=True)
        results[mode] += (frames,)
        print(f"{mode}: warping error {results[mode][0]:.2e}, {seconds:.1f} s, style {terms['style']:.3g}, "
              f"content {terms['content']:.3g}", flush=True)
    peer = results.get("independent")
    print("\n| mode | warping error | vs independent | s/frame | cost vs independent | style | content |")
    print("|---|---|---|---|---|---|---|")
    for mode, (error, seconds, terms, _) in results.items():
        ratio = f"{error / peer[0]:.3f}" if peer else "-"
        cost = f"{seconds / peer[1]:.2f}" if peer else "-"
        print(f"| {mode} | {error:.2e} | {ratio} | {seconds / n:.2f} | {cost} | {terms['style']:.3g} | "
              f"{terms['content']:.3g} |")
    if args.gif and "independent" in results and "sequential" in results:
        side_by_side_gif(args.gif, results["independent"][3], results["sequential"][3], args.fps)
        print(f"wrote {args.gif}")


def devices(args) -> None:
    """Frames per second of the multipass mode on N fake devices and on one, each in its own process."""
    for count in (args.devices, 1):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}
        command = [sys.executable, __file__, "--worker", "--frames", str(args.frames), "--size", str(args.size),
                   "--steps", str(args.steps)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        facts = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"multipass on {facts['devices']} device(s): {facts['frames']} frames of {args.size} px, "
              f"{args.steps} steps per frame: {facts['seconds']:.1f} s (compiling included), "
              f"{facts['frames'] / facts['seconds']:.3f} frames/s")


def worker(args) -> None:
    import jax

    from jaxstyle import flow

    truth = synthetic(args.frames, args.size)
    _, seconds, _ = paint("multipass", truth, flow.clip_flows(truth.frames), args.steps)
    print(json.dumps({"devices": jax.local_device_count(), "frames": len(truth.frames), "seconds": seconds}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/video_bench"))
    parser.add_argument("--gif", type=pathlib.Path, help="write independent | sequential side by side here")
    parser.add_argument("--fps", type=float, default=8)
    parser.add_argument("--temporal-weight", type=float, help="instead of the default (VideoConfig)")
    parser.add_argument("--devices", type=int, help="frames/s of multipass on this many fake devices against one")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    elif args.devices:
        devices(args)
    else:
        quality(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
