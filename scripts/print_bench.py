"""Print-size runs on this machine: time and memory against a 512 px run, and quality at equal time.

    python scripts/print_bench.py [--parts ref,default,single,1024,4096] [--out /tmp/print_bench]

Each part runs the command line (`python -m jaxstyle stylize`) on the bundled
photo and painting in a fresh process and reports its wall time, its peak
resident memory (``wait4``'s ``ru_maxrss`` of that process) and its plan line:

- ``ref``: ``--size 512 --steps 300``, the peer the others are measured against;
- ``default``: ``--size 2048`` with no option about memory or scales (coarse
  to fine by default), a snapshot every 75 steps (the ends of its scales);
- ``single``: ``--size 2048`` in one scale, stopped (Ctrl-C) when it has run
  as long as ``default`` did; its last snapshot (every 10 steps) is its
  picture at equal time. Both pictures are measured by
  ``scripts/measure_quality.py``, and 100 % crops of both are written;
- ``1024``: ``--size 1024 --steps 50``, for the estimate against the measure;
- ``4096``: the top scale of a 4096 px run within ``--max-memory 8``,
  continuing the ``default`` picture, for 1 and for 3 steps: the difference
  of their times is the time of 2 steps.

Run it on an idle machine: a third busy process changes every time here.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "jaxstyle" / "examples"
CONTENT, STYLE = EXAMPLES / "chelsea.png", EXAMPLES / "van_gogh_auvers.png"


def run(out: pathlib.Path, *flags, stop_after: float | None = None) -> dict:
    """One ``jaxstyle stylize`` in a fresh process: wall seconds, peak RSS (MiB) and its plan line.

    ``stop_after``: send SIGINT after so many seconds (the run saves itself and ends)."""
    cmd = [sys.executable, "-m", "jaxstyle", "stylize", str(CONTENT), "--style", str(STYLE), "-o", str(out),
           "--overwrite", *map(str, flags)]
    start, wall = time.perf_counter(), time.time()
    with open(out.with_suffix(".stderr"), "w") as err:
        child = subprocess.Popen(cmd, stderr=err, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        if stop_after is not None:
            try:
                child.wait(stop_after)
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGINT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    text = out.with_suffix(".stderr").read_text()
    plan = next((line.removeprefix("jaxstyle: plan: ") for line in text.splitlines() if "plan: " in line), "")
    result = {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024, "plan": plan,
              "exit": os.waitstatus_to_exitcode(status), "started": wall}
    print(f"{out.name}: {seconds:.0f} s, peak {result['peak_mib']:.0f} MiB, exit {result['exit']}; plan: {plan}",
          flush=True)
    return result


def crops(paths: list[pathlib.Path], out: pathlib.Path, box=(600, 350, 1100, 750)) -> None:
    """The same 100 % crop of each picture, side by side."""
    tiles = [Image.open(p).convert("RGB").crop(box) for p in paths]
    sheet = Image.new("RGB", (sum(t.width for t in tiles), tiles[0].height))
    for i, t in enumerate(tiles):
        sheet.paste(t, (i * t.width, 0))
    sheet.save(out)
    print(f"crops: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="ref,default,single,1024,4096")
    parser.add_argument("--out", default="/tmp/print_bench")
    args = parser.parse_args()
    parts, out = args.parts.split(","), pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    if "ref" in parts:
        results["ref"] = run(out / "ref512.png", "--size", 512, "--steps", 300)
    default = out / "default2048.png"
    if "default" in parts:
        results["default"] = run(default, "--size", 2048, "--save-every", 75)
        if "ref" in results:
            print(f"default 2048 / ref 512: {results['default']['seconds'] / results['ref']['seconds']:.2f}x time")
    if "single" in parts and "default" in results:
        single = out / "single2048.png"
        for old in out.glob("single2048.png.step*.png"):
            old.unlink()
        r = results["single"] = run(single, "--size", 2048, "--scale-steps", 1000, "--save-every", 10,
                                    stop_after=results["default"]["seconds"])
        snaps = sorted(out.glob("single2048.png.step*.png"))
        equal = [p for p in snaps if p.stat().st_mtime - r["started"] <= results["default"]["seconds"]]
        picture = equal[-1]
        print(f"single scale at equal time: {picture.name}")
        for side in out.glob("single2048.png.*checkpoint*"):
            side.unlink()
        subprocess.run([sys.executable, str(ROOT / "scripts" / "measure_quality.py"), str(default), str(picture),
                        *map(str, sorted(out.glob("default2048.png.step*.png")))], check=True)
        crops([default, picture], out / "crops.png")
    if "1024" in parts:
        results["1024"] = run(out / "run1024.png", "--size", 1024, "--steps", 50)
    if "4096" in parts and default.exists():
        one = run(out / "top4096_1.png", "--size", 4096, "--scale-steps", 1, "--max-memory", 8, "--init", default)
        three = run(out / "top4096_3.png", "--size", 4096, "--scale-steps", 3, "--max-memory", 8, "--init", default)
        print(f"4096 top scale: {(three['seconds'] - one['seconds']) / 2:.1f} s/step, peak "
              f"{max(one['peak_mib'], three['peak_mib']):.0f} MiB")
    for name, r in results.items():
        estimate = re.search(r"about ([\d.]+) GiB", r["plan"])
        print(f"| {name} | {r['plan']} | {estimate and estimate[1]} GiB | {r['peak_mib'] / 1024:.2f} GiB "
              f"| {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
