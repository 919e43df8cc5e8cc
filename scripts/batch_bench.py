"""Throughput of `batch.stylize_batch` on the real VGG19, and its cost against the same items run one by one.

Each batch size runs in its own process, so that the peak resident memory
(``ru_maxrss``) is that batch size's own. A process first runs one untimed
chunk (10 steps) of the batch program and of a single run (compilation), then
``--rounds`` rounds, each timing the batch of ``b`` items for ``--steps``
steps and the same ``b`` items run one after another with `optimize.stylize`,
taking turns (the order alternates between rounds). Reported per batch size
(medians over rounds):

- step time: seconds per optimisation step of the whole batch;
- image-steps/s: batch size x steps / seconds, the throughput;
- images/s at 300 steps: a whole default run (``--steps 300``) of that many images;
- batch / singles: the batch's time over the items' single runs' time (at
  most 1: a batch costs no more than its items one by one);
- compile: seconds of the first call (compilation plus 10 steps);
- peak RSS: the process's peak resident memory.

Usage:
    python scripts/batch_bench.py [--size 256] [--steps 20] [--batch-sizes 1,2,4,8] [--optimizer lbfgs]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(batch_size: int, size: int, steps: int, weights_path: str | None, optimizer: str, rounds: int) -> dict:
    import numpy as np

    from jaxstyle import batch, images, optimize, runtime, step, weights
    from jaxstyle.config import StylizeConfig

    runtime.configure(cache=False)  # the command line's XLA flags (this process imports JAX only now)
    examples = os.path.join(ROOT, "jaxstyle", "examples")
    photo = images.load_image(os.path.join(examples, "chelsea.png"))
    style = images.load_image(os.path.join(examples, "van_gogh_auvers.png"))
    h, w = photo.shape[:2]
    side = min(h, w)
    # Different square crops of the photo: one shape, different contents.
    contents = [photo[:side, i * (w - side) // max(1, batch_size - 1):][:, :side] if batch_size > 1
                else photo[:side, :side] for i in range(batch_size)]
    params, meta = weights.load(weights_path)
    network = optimize.Network(weights.model_for(meta), params)
    config = StylizeConfig(size=size, steps=step.CHUNK, optimizer=optimizer)

    start = time.perf_counter()
    batch.stylize_batch(contents, style, network, config)
    first = time.perf_counter() - start
    optimize.stylize(contents[0], style, network, config)
    config = config.replace(steps=steps)

    def batched() -> float:
        start = time.perf_counter()
        out = batch.stylize_batch(contents, style, network, config)
        assert all(np.all(np.isfinite(o)) for o in out)
        return time.perf_counter() - start

    def singles() -> float:
        start = time.perf_counter()
        for content in contents:
            optimize.stylize(content, style, network, config)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"batch": [], "singles": []}
    for r in range(rounds):
        for name, run in ((("batch", batched), ("singles", singles))[::1 if r % 2 == 0 else -1]):
            times[name].append(run())
    seconds, alone = statistics.median(times["batch"]), statistics.median(times["singles"])
    return {"batch_size": batch_size, "size": size, "steps": steps, "seconds": seconds, "singles_seconds": alone,
            "ratio": seconds / alone, "step_time": seconds / steps, "image_steps_per_s": batch_size * steps / seconds,
            "images_per_s_300_steps": batch_size * steps / seconds / 300, "first_call_s": first,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (after one untimed chunk)")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--weights", help="VGG19 weights (default: weights.default_path())")
    parser.add_argument("--optimizer", default="adam", choices=("adam", "lbfgs"))
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the batch and the singles")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one batch size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.steps, args.weights, args.optimizer, args.rounds)))
        return
    import jax

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.local_device_count()} device(s), "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}")
    print(f"{args.optimizer}, {args.size} px, {args.steps} steps, {args.rounds} rounds in turns")
    print(f"{'batch':>5} {'step time':>10} {'image-steps/s':>14} {'images/s @300':>14} {'batch/singles':>14} "
          f"{'first call':>11} {'peak RSS':>10}")
    for b in (int(x) for x in args.batch_sizes.split(",")):
        cmd = [sys.executable, __file__, "--one", str(b), "--size", str(args.size), "--steps", str(args.steps),
               "--optimizer", args.optimizer, "--rounds", str(args.rounds)]
        if args.weights:
            cmd += ["--weights", args.weights]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{b:>5} failed: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{b:>5} {r['step_time']:>9.4f}s {r['image_steps_per_s']:>14.2f} {r['images_per_s_300_steps']:>14.4f} "
              f"{r['ratio']:>14.2f} {r['first_call_s']:>10.1f}s {r['peak_rss_mib']:>8.0f} MiB", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
